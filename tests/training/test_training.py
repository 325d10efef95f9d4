"""Training on a handful of real LFW faces: the loss falls, the seed fixes the run, resume continues it,
distillation brings the student towards the teacher; the CLI's bad input gets one line."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.realdata import shared_data
from worker.cli.main import main
from worker.models.face_resnet import load_face_resnet
from worker.models.files import FACE_RESNET, model_path
from worker.training import augment
from worker.training.data import FaceSet, align_images, scan_folder
from worker.training.loop import Trainer, TrainSettings, _teacher_input
from worker.training.losses import MARGIN, distillation_loss, squared_distances

PEOPLE = ("Abdullah_Gul", "Adrien_Brody", "Al_Gore", "Alejandro_Toledo")
FACES = 3  # of each: 12 faces, one batch of P=4 x K=3


@pytest.fixture(scope="module")
def faces() -> FaceSet:
    root = shared_data() / "lfw" / "images"
    images = [item for person in PEOPLE for item in scan_folder(root, {person})[:FACES]]
    return align_images(images, detect=False)


@pytest.fixture(scope="module")
def teacher():
    return load_face_resnet(model_path(FACE_RESNET))


def _settings(**changes) -> TrainSettings:
    base = TrainSettings(steps=4, people=4, faces=FACES, checkpoint_every=0, seed=5, augment=asdict(augment.NONE))
    return TrainSettings(**{**asdict(base), **changes})


def _embed_all(trainer: Trainer) -> torch.Tensor:
    """Every face at once, no augmentation, batch statistics as in training (a few steps barely move the running
    statistics)."""
    trainer.model.train()
    with torch.no_grad():
        x = torch.from_numpy(trainer.faces.small).permute(0, 3, 1, 2).float().div(255.0)
        return trainer.model(x)


def _all_triplets_loss(trainer: Trainer) -> float:
    """Mean hinge over every (anchor, positive, negative) of the set: what the mining works towards."""
    e = _embed_all(trainer)
    d = squared_distances(e)
    labels = torch.from_numpy(trainer.faces.labels)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool)
    hinge = torch.relu(d[:, :, None] - d[:, None, :] + MARGIN)  # [a, p, n]
    valid = pos[:, :, None] & ~same[:, None, :]
    return float(hinge[valid].mean())


def test_a_few_steps_lower_the_triplet_loss_on_real_faces(faces):
    trainer = Trainer(faces, _settings(steps=3), torch.device("cpu"))
    before = _all_triplets_loss(trainer)
    history = trainer.run(progress=False)
    after = _all_triplets_loss(trainer)
    assert after < before * 0.9, (before, after)
    assert all(r.active is not None and 0.0 <= r.active <= 1.0 for r in history)


def test_distillation_brings_the_student_towards_the_teacher(faces, teacher):
    trainer = Trainer(faces, _settings(steps=2, triplet=False, distill=True), torch.device("cpu"), teacher)
    with torch.no_grad():
        large = torch.from_numpy(faces.large).permute(0, 3, 1, 2).float().div(255.0)
        target = teacher(_teacher_input(teacher, large))
    before = float(distillation_loss(_embed_all(trainer), target))
    trainer.run(progress=False)
    after = float(distillation_loss(_embed_all(trainer), target))
    assert after < before * 0.8, (before, after)


def test_the_seed_fixes_the_run_and_resume_from_a_checkpoint_continues_it(faces, tmp_path):
    settings = _settings(steps=3, people=2, faces=2, checkpoint_every=1, augment=asdict(augment.AugmentSettings()))
    whole = [r.loss for r in Trainer(faces, settings, torch.device("cpu")).run(progress=False)]
    checkpoint = tmp_path / "run.ckpt"
    first = Trainer(faces, _settings(**{**asdict(settings), "steps": 1}), torch.device("cpu"))
    assert [r.loss for r in first.run(checkpoint, False)] == whole[:1]  # same seed, same first step
    resumed = Trainer(faces, settings, torch.device("cpu"))
    resumed.restore(checkpoint)
    assert resumed.step == 1
    assert [r.loss for r in resumed.run(checkpoint, progress=False)] == whole  # then the same steps 2 and 3
    other = Trainer(faces, _settings(**{**asdict(settings), "steps": 1, "seed": 6}), torch.device("cpu"))
    assert [r.loss for r in other.run(progress=False)] != whole[:1]


def _person_folder(tmp_path: Path, people: tuple[str, ...], faces: int = FACES) -> Path:
    data = tmp_path / "data"
    for person in people:
        (data / person).mkdir(parents=True)
        for image in sorted((shared_data() / "lfw" / "images" / person).glob("*.jpg"))[:faces]:
            os.symlink(image, data / person / image.name)
    return data


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_an_empty_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m.pt"), "--quiet"]) == 1
    assert "no image" in _error_line(capsys)
    assert not (tmp_path / "m.pt").exists()


def test_one_person_cannot_make_triplets(tmp_path, capsys):
    data = _person_folder(tmp_path, PEOPLE[:1])
    args = ["train", "--data", str(data), "--centred", "--no-cache", "--out", str(tmp_path / "m.pt"), "--quiet"]
    assert main(args) == 1
    assert "needs at least 16 people" in _error_line(capsys)
    assert main([*args, "--people", "2"]) == 1
    assert "needs at least 2 people with 2 or more faces each" in _error_line(capsys)


def test_cli_trains_resumes_and_the_model_evaluates_on_lfw_pairs(tmp_path, capsys):
    data = _person_folder(tmp_path, PEOPLE)
    out = tmp_path / "m.pt"
    args = ["train", "--data", str(data), "--centred", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    args += ["--people", "2", "--faces", "2", "--steps", "1", "--quiet"]
    assert main(args) == 0
    assert "trained steps 1-1" in capsys.readouterr().out
    assert main(args) == 1  # the checkpoint of that run is there: no silent restart over it
    assert "--resume" in _error_line(capsys)
    assert main([*args[:-3], "--steps", "2", "--resume", "--quiet"]) == 0
    assert "trained steps 2-2" in capsys.readouterr().out
    lfw = shared_data() / "lfw" / "images"
    pairs = tmp_path / "pairs.txt"
    a, b = (sorted(int(p.stem.rsplit("_", 1)[1]) for p in (lfw / person).glob("*.jpg")) for person in PEOPLE[2:])
    pairs.write_text(f"1\t1\n{PEOPLE[2]}\t{a[0]}\t{a[1]}\n{PEOPLE[2]}\t{a[0]}\t{PEOPLE[3]}\t{b[0]}\n")
    evaluate = ["eval", "lfw", "--lfw", str(lfw), "--pairs", str(pairs), "--model", str(out), "--json", "--quiet"]
    code = main([*evaluate, "--roc", str(tmp_path / "roc.png"), "--centred"])
    assert code == 0
    assert '"accuracy_mean"' in capsys.readouterr().out.strip().splitlines()[-1]


def test_a_flat_folder_trains_by_distillation_alone(tmp_path, capsys):
    data = tmp_path / "flat"
    data.mkdir()
    for person in PEOPLE[:2]:
        for image in sorted((shared_data() / "lfw" / "images" / person).glob("*.jpg"))[:2]:
            os.symlink(image, data / image.name)
    out = tmp_path / "d.pt"
    args = ["train", "--data", str(data), "--centred", "--no-cache", "--out", str(out), "--distill"]
    assert main([*args, "--people", "2", "--faces", "2", "--steps", "1", "--quiet"]) == 0
    state = torch.load(out, weights_only=True)
    assert state["fc.weight"].shape == (128, 736)
    assert np.isfinite(state["fc.weight"].numpy()).all()
    # --init: fine-tuning starts from those weights (lr 0: the model written is the one read).
    tuned = tmp_path / "e.pt"
    again = ["train", "--data", str(data), "--centred", "--no-cache", "--out", str(tuned), "--distill"]
    again += ["--init", str(out), "--learning-rate", "0", "--people", "2", "--faces", "2", "--steps", "1", "--quiet"]
    assert main(again) == 0
    assert torch.equal(torch.load(tuned, weights_only=True)["fc.weight"], state["fc.weight"])
