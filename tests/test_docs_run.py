"""Every command that README.md and docs/*.md show and that can run offline runs, and exits as the docs say.

**What runs.** Each `facewatch ...` line of the docs' code blocks (tests/doclines.py extracts them:
synopses, ``$`` prompts, continuation lines, ``VAR=value`` prefixes and shell variables included),
and face_recognition's two programs (`facewatch-face-recognition`, `facewatch-face-detection`), is run
through the real CLI in this process (``worker.cli.main.main(argv)``; the programs' click commands),
so the Python modules load once; stdout and stderr are captured. A synopsis runs as each of its
``a | b`` alternatives, with its optional flags given (as the parse test in test_docs_commands.py
reads it) and ``x|y`` choices at their first. Each must exit with the status its doc promises: 0,
or the one EXPECTED_STATUS lists with the doc's reason and the message the doc shows. Beyond the
status: a command with ``--json`` prints only JSON lines, and a command whose comment lists the keys
of its records (``# {"image", "box", "detector", "detector_score"} per face``) prints records with
those keys.

**Parse-only.** Commands that need a Kafka broker, a camera or a listening server: `run` (the
streaming worker on Kafka and cameras), `publish` (writes frames to Kafka), `admin serve` (a server
that runs until stopped), `watchlist replicate` (writes to the replication topic) and anything with an
``rtsp://`` URL. ``online_reason`` classifies them by rule and a test holds the list to
EXPECTED_ONLINE, so a new offline command cannot land there unnoticed. test_docs_commands.py
parses them. Not covered here: lines that run other programs (docker, kubectl, helm, curl, openssl,
``python scripts/...``; facewatch inside `docker compose run` and `kubectl exec`): they need a
Docker engine, a cluster or minutes of measuring; README's first command, ``bash scripts/install.sh
&& .venv/bin/facewatch demo``, installs from the network (tests/test_demo.py runs its demo).

**The sandbox** (one per module run): a temporary folder holding, per doc, a working folder with
``../shared`` reachable, its own HOME and XDG_DATA_HOME/XDG_CACHE_HOME (the default watchlist lives
under ~/.local/share/facewatch), an empty ``docs/`` (README's ``--out docs/annotated_frame.png``
lands there, never on the tracked file; a last test checks that no command wrote into the
repository) and the repository's ``worker/evaluation/data`` labels (read by one command). No
FACEWATCH_* variable of the calling environment reaches a command; only the doc's own prefixes and
what the doc tells the user to configure (the key after `watchlist rekey`). Without ../shared the
whole module skips with the reason, as tests/realdata.py does.

**Inputs.** Placeholders are bound to real inputs (``bind``): IMAGE and DIR to ../shared's stills,
IMAGE_A/IMAGE_B to Obama's still and the still of Obama and Biden, VIDEO to the Hamilton clip,
NAME/SOURCE of `watchlist add` to LFW photos of one person (``ada1.jpg``...), ``photo.png`` to
Eileen Collins's portrait from scikit-image's wheel, ``people/`` to a folder per LFW person, ID to
the id the doc's earlier `add`/`import` printed (one still enrolled), a visitor ID to the one
`visitors list` printed, ENTRY to the entry `visitors opt-out add` printed, FILE to what the
command takes (README's own worker.yaml for `config check`, a key file made as docs/watchlist.md
says for `rekey`). A doc's commands run in doc order, each doc in its own folder, so state builds
up (add before show, export before restore); running one test alone first runs the commands of its
doc before it. The visitor commands read a visitor store that `facewatch demo --visitors --fast
--keep DIR` filled, and `--events events.jsonl` the events that demo printed.

**Reduced inputs.** Commands that reproduce a figure on a full dataset would take minutes to hours,
so they run with their documented flags on reduced copies of their inputs in the same layout: the
sandbox's ``../shared`` mirrors the real one (links to its files), with an LFW of the people of one
same-person and one different-person pair per fold of pairs.txt (its pairs.txt, pairsDevTrain.txt
and pairsDevTest.txt hold those lines), Joseph_Biden's folder (docs/face_recognition.md names it)
and 7 photos each of two people (``--compare-classifiers --templates 5`` needs more than 5); 3
images of the WIDER FACE subset and of dlib's examples; the Hamilton clip's first 5 seconds (its
packets copied; README annotates the frame at 4.5 s). The commands' own size options do the rest
(``reduce``): `bench embed` --batches 1,8 --seconds 0.05, `bench detect` --sizes 320x240 --seconds
0.05, `bench index` --sizes 1000 --max-calls 10 on a tree of 140 LFW photos beside the mirror's LFW
(it fits a Gaussian to more than 128 embeddings), `bench pipeline` --frames 10 (--distractor-count
3), `bench compat` --images 2 --rounds 1, `eval quality` --gallery-size 20, `bench streams` --steps 1
--seconds 2 --warmup 0.5 --sizes 360p, `bench roofline` --seconds 0.1 --rounds 1 --threads 1 --batch 2,
`train` --steps 2 (3 with --resume) --people 2 --faces 2 --threads 1.
A `bench`, `eval` or `demo` line that already ran with the same arguments and FACEWATCH_* environment (`bench detect` in
README and twice in docs/benchmarks.md, `demo --visitors` in README and docs/visitors.md) is not
run again: its result is checked again. The OMP_WAIT_POLICY prefixes are set but do nothing
in-process (OpenMP reads them at start): they only steady timings. `model export --weights
nn4.small2.v1.t7` reads a .t7 laid out as OpenFace saves it with random weights, as tests/models
write it (OpenFace's file cannot be downloaded here). All of it takes about 140 s of processor time
(user + system, all threads; 200 s wall at load average 5-6 on the shared 2-core machine); on an
idle one, about that, the documented demo's 17 s of real-time video included.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.doclines import ROOT, DocCommand, _subparsers, all_commands, alternatives
from tests.realdata import SHARED_DIR, SHARED_MISSING, has_shared_data
from worker.cli.main import build_parser
from worker.samples import SAMPLE_PORTRAITS, sample_path

COMMANDS = all_commands()


# -- online commands: parse-only -------------------------------------------------------------


WORKER = "the streaming worker: reads Kafka and cameras until it is stopped"
INGEST = "the ingest role: writes a camera's frames to Kafka"
SERVER = "an HTTP server that runs until it is stopped"
KAFKA = "measures against a Kafka broker (--bootstrap)"
README_CONFIG = "README's worker.yaml: Kafka brokers, the replication topic, /var/lib/facewatch"


def online_reason(command: DocCommand) -> str | None:
    """Why the command cannot run offline (it needs Kafka, a camera or a listening server), or None."""
    words = command.text.split()
    if any(word.startswith("rtsp://") for word in words):
        return "reads an RTSP camera"
    if command.program != "facewatch":
        return None
    commands = [word for word in words[1:] if not word.startswith(("-", "["))]
    if commands[:1] == ["run"]:
        return WORKER
    if commands[:1] == ["publish"]:
        return INGEST
    if commands[:2] == ["admin", "serve"]:
        return SERVER
    if "--bootstrap" in words:
        return KAFKA
    if "--config" in words and "worker.yaml" in words:
        return README_CONFIG
    if commands[:1] == ["watchlist"] and "replicate" in words:
        return "publishes the watchlist to its Kafka replication topic"
    return None


# Every command that is parse-only here, (doc, command) -> why; online_reason must classify exactly these.
EXPECTED_ONLINE = {
    ("README.md", 'facewatch watchlist add "Ada Lovelace" ada.mp4 rtsp://cam/1 --merge'): "reads an RTSP camera",
    ("README.md", "facewatch run --config worker.yaml"): WORKER,
    ("README.md", 'facewatch --config worker.yaml watchlist add "Ada Lovelace" ada.jpg'): README_CONFIG,
    (
        "README.md",
        "facewatch publish rtsp://cam/stream --camera door-1 --topic facewatch.frames",
    ): "reads an RTSP camera",
    ("README.md", "facewatch admin serve [--store FILE] [--port 8791]"): SERVER,
    (
        "README.md",
        "facewatch publish rtsp://cam-2/stream --camera lobby --topic facewatch.frames --http-port 8791",
    ): "reads an RTSP camera",
    ("README.md", "facewatch admin serve --store watchlist.db"): SERVER,
    ("docs/admin_api.md", "facewatch admin serve --store watchlist.db"): SERVER,
    (
        "docs/operations.md",
        "facewatch publish rtsp://viewer:secret@192.0.2.11/stream1 --camera yard --bootstrap localhost:9094 "
        "--http-port 8791",
    ): "reads an RTSP camera",
    ("README.md", "facewatch bench scale --bootstrap HOST:PORT [--replicas 1,2]"): KAFKA,
    ("README.md", "facewatch bench kafka --bootstrap HOST:PORT"): KAFKA,
    ("docs/benchmarks.md", "facewatch bench scale --bootstrap 127.0.0.1:9092 --frames 150 --rounds 3"): KAFKA,
    ("docs/benchmarks.md", "facewatch bench kafka --bootstrap 127.0.0.1:9092"): KAFKA,
    ("docs/benchmarks.md", "facewatch bench scale --bootstrap 127.0.0.1:19392 --cameras 8 --rounds 2"): KAFKA,
    ("docs/watchlist.md", "facewatch watchlist [--store PATH] [--json] replicate"): (
        "publishes the watchlist to its Kafka replication topic"
    ),
}

RUNNABLE = [command for command in COMMANDS if online_reason(command) is None]

# Commands whose doc promises another exit status than 0: (doc, command) -> (status, what stderr says).
EXPECTED_STATUS = {
    # README enrolls fewer than 3 photos of each person; the SVM needs watchlist.svm_min_templates (3) of each,
    # and says so (README's comment says it too).
    ("README.md", "facewatch identify [--classifier svm] photo.jpg DIR"): (1, "an SVM needs at least 3 templates"),
    # "add NAME refuses a name already enrolled" (the example assumes George W Bush is: see PRECONDITIONS).
    ("docs/watchlist.md", 'facewatch watchlist add "George W Bush" bush_0002.jpg'): (1, "is already enrolled"),
}

# State a doc's example assumes and no earlier command of the doc makes: run before that command.
PRECONDITIONS = {
    ("docs/watchlist.md", 'facewatch watchlist add "George W Bush" bush_0002.jpg'): [
        ["watchlist", "add", "George W Bush", "bush_0001.jpg"],
    ],
}


def test_the_docs_show_commands_to_run():
    # The extraction works: synopses, env prefixes and shell variables included.
    assert len(COMMANDS) >= 90, [c.where for c in COMMANDS]
    texts = [c.text for c in COMMANDS]
    assert "facewatch bench embed" in texts  # shown as `OMP_WAIT_POLICY=PASSIVE facewatch bench embed`
    assert not any("$S" in text for text in texts), "shell variables are substituted"
    assert not any(text.startswith("facewatch  ") for text in texts), "benchmark table rows are no commands"


def test_the_online_commands_are_exactly_the_expected_ones():
    online = {(c.doc, c.text): online_reason(c) for c in COMMANDS if online_reason(c) is not None}
    assert online == EXPECTED_ONLINE, (
        f"newly parse-only: {sorted(online.items() - EXPECTED_ONLINE.items())}; no longer (or no longer shown, "
        f"or for another reason): {sorted(EXPECTED_ONLINE.items() - online.items())}"
    )
    # The rule itself: a command that runs offline is not classified online.
    offline = DocCommand("x.md", 1, "facewatch watchlist --store x.db list", (), "")
    assert online_reason(offline) is None


def test_expected_statuses_and_preconditions_name_shown_commands():
    shown = {(c.doc, c.text) for c in RUNNABLE}
    assert set(EXPECTED_STATUS) <= shown
    assert set(PRECONDITIONS) <= shown


# -- running a command in this process ------------------------------------------------------


@dataclass
class Result:
    """What one run printed and returned."""

    argv: list[str]
    status: int
    stdout: str
    stderr: str
    seconds: float
    cpu_seconds: float  # this process's user + system time during the run, all threads

    def shown(self) -> str:
        return " ".join(self.argv)

    def failure(self, where: str, expected: int) -> str:
        tail = "\n".join((self.stderr.strip() or self.stdout.strip()).splitlines()[-12:])
        return f"{where}: `{self.shown()}` exited {self.status}, the doc promises {expected}:\n{tail}"


@contextlib.contextmanager
def _environment(env: dict[str, str], cwd: Path) -> Iterator[None]:
    """os.environ exactly ``env`` over the inherited non-FACEWATCH_ variables, in ``cwd``; all restored after."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # the worker sets its own
    for key in [key for key in os.environ if key.startswith("FACEWATCH_")]:
        del os.environ[key]
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for signum, handler in saved_signals.items():
            signal.signal(signum, handler)


def invoke(program: str, argv: list[str], env: dict[str, str], cwd: Path) -> Result:
    """Run one installed program in this process; its exit status and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    start, cpu = time.perf_counter(), _cpu()
    with _environment(env, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if program == "facewatch":
                from worker.cli.main import main

                status = main(argv)
            else:
                module = {
                    "facewatch-face-recognition": "worker.compat.face_recognition.face_recognition_cli",
                    "facewatch-face-detection": "worker.compat.face_recognition.face_detection_cli",
                }[program]
                command = __import__(module, fromlist=["main"]).main
                status = command.main(args=argv, prog_name=program)  # exits, as the installed script does
        except SystemExit as exc:  # argparse and click exit this way
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Result(argv, int(status or 0), out.getvalue(), err.getvalue(), time.perf_counter() - start, _cpu() - cpu)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the sandbox ------------------------------------------------------------------------------


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _lfw_selection(pairs_file: Path) -> tuple[list[str], list[str]]:
    """The header and lines of a reduced pairs file: each fold's first same-person and first different pair."""
    lines = pairs_file.read_text().splitlines()
    folds, per_class = (int(v) for v in lines[0].split())
    chosen = []
    for fold in range(folds):
        start = 1 + fold * 2 * per_class
        chosen += [lines[start], lines[start + per_class]]
    return [f"{folds}\t1"], chosen


CLIP_SECONDS = 5.0  # of the Hamilton clip's 9.2: README's `annotate ... --at 4.5` needs 4.5


def _clip_head(source: Path, target: Path, seconds: float) -> None:
    """The first ``seconds`` of an H.264 MP4, its packets copied (not re-encoded: the same frames)."""
    import av

    target.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as original, av.open(str(target), "w") as head:
        stream = original.streams.video[0]
        copy = head.add_stream_from_template(stream)
        for packet in original.demux(stream):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            if (packet.dts - (stream.start_time or 0)) * stream.time_base >= seconds:
                break
            packet.stream = copy
            head.mux(packet)


def _pair_images(line: str) -> list[tuple[str, int]]:
    fields = line.split("\t")
    if len(fields) == 3:
        return [(fields[0], int(fields[1])), (fields[0], int(fields[2]))]
    return [(fields[0], int(fields[1])), (fields[2], int(fields[3]))]


def build_mirror(mirror: Path) -> list[Path]:
    """``mirror``/data: ../shared/data reduced to what runs in minutes, in the same layout (links to the files).

    Returns the LFW folders of three people for the sandbox's literal inputs (``ada1.jpg``, ``people/``).
    """
    data, real = mirror / "data", SHARED_DIR / "data"
    for name in ("stills", "README.md"):
        _link(real / name, data / name)
    _clip_head(real / "video" / "short_hamilton_clip.mp4", data / "video" / "short_hamilton_clip.mp4", CLIP_SECONDS)
    lfw, real_lfw = data / "lfw", real / "lfw"
    header, chosen = _lfw_selection(real_lfw / "pairs.txt")
    (lfw / "images").mkdir(parents=True)
    (lfw / "pairs.txt").write_text("\n".join(header + chosen) + "\n")
    # View 1's files, of the same people: eval cluster chooses its threshold on those named in DevTrain.
    half = len(chosen) // 2
    (lfw / "pairsDevTrain.txt").write_text("\n".join([str(half // 2), *chosen[:half]]) + "\n")
    (lfw / "pairsDevTest.txt").write_text("\n".join([str(half // 2), *chosen[half:]]) + "\n")
    for line in chosen:
        for person, number in _pair_images(line):
            name = f"{person}_{number:04d}.jpg"
            link = lfw / "images" / person / name
            if not link.exists():
                _link(real_lfw / "images" / person / name, link)
    _link(real_lfw / "images" / "Joseph_Biden", lfw / "images" / "Joseph_Biden")  # docs/face_recognition.md
    # eval identify --compare-classifiers --templates 5 (docs/watchlist.md) needs people with more than 5 photos.
    many = [
        person
        for person in sorted((real_lfw / "images").iterdir())
        if len(list(person.glob("*.jpg"))) >= 7 and not (lfw / "images" / person.name).exists()
    ][:2]
    for person in many:
        for photo in sorted(person.glob("*.jpg"))[:7]:
            _link(photo, lfw / "images" / person.name / photo.name)
    # bench index fits a Gaussian to the real embeddings (more than 128 of them: 128-d): the photos of
    # pairsDevTest.txt's first same-person pairs, 140 of them, in a tree of its own beside the mirror's LFW.
    index_tree = data / "lfw-index" / "images"
    for line in (real_lfw / "pairsDevTest.txt").read_text().splitlines()[1:]:
        for person, number in _pair_images(line):
            link = index_tree / person / f"{person}_{number:04d}.jpg"
            if not link.exists():
                _link(real_lfw / "images" / person / link.name, link)
        if len(list(index_tree.glob("*/*.jpg"))) >= 140:
            break
    wider, real_wider = data / "detection" / "wider_val_subset200", real / "detection" / "wider_val_subset200"
    wider.mkdir(parents=True)
    gt_lines = (real_wider / "gt.jsonl").read_text().splitlines()[:3]
    (wider / "gt.jsonl").write_text("\n".join(gt_lines) + "\n")
    for line in gt_lines:
        image = json.loads(line)["image"]
        _link(real_wider / image, wider / image)
    examples = data / "detection" / "dlib_examples_faces" / "images"
    for image in sorted((real / "detection" / "dlib_examples_faces" / "images").iterdir())[:3]:
        _link(image, examples / image.name)
    # People outside the mirror's LFW, for enrolling: the first three with three photos or more.
    return [
        folder
        for folder in sorted((real_lfw / "images").iterdir())
        if len(list(folder.glob("*.jpg"))) >= 3 and not (lfw / "images" / folder.name).exists()
    ][:3]


def _readme_worker_yaml() -> str:
    """README's worker.yaml, as its `# worker.yaml` code block shows it."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```yaml\n# worker\.yaml\n(.*?)```", text, re.S)
    assert match, "README shows a worker.yaml"
    return match.group(1)


KEY = base64.b64encode(hashlib.sha256(b"facewatch docs run").digest()).decode()  # as `openssl rand -base64 32`


@dataclass
class Sandbox:
    """The temporary tree all doc commands run in, and what runs share."""

    root: Path
    people: list[Path]  # LFW folders of three people with three photos or more
    memo: dict = field(default_factory=dict)  # (program, argv, FACEWATCH_ env) -> Result
    sessions: dict = field(default_factory=dict)  # doc -> DocSession
    _visitors: Path | None = None

    def session(self, doc: str) -> DocSession:
        if doc not in self.sessions:
            self.sessions[doc] = DocSession(self, doc)
        return self.sessions[doc]

    def visitors(self) -> Path:
        """A folder with the visitor store and the events of `facewatch demo --visitors --fast --keep DIR`."""
        if self._visitors is None:
            folder = self.root / "demo"
            home = self.root / "demo-home"
            home.mkdir()
            argv = ["demo", "--visitors", "--fast", "--keep", str(folder)]
            result = invoke("facewatch", argv, _home_env(home, self.root / "cache"), home)
            assert result.status == 0, result.failure("the visitor store's demo", 0)
            (folder / "events.jsonl").write_text(result.stdout)
            self._visitors = folder
        return self._visitors


def _home_env(home: Path, cache: Path) -> dict[str, str]:
    """HOME and the XDG folders in the sandbox; one embedding cache for all docs (they embed the same trees)."""
    return {"HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share"), "XDG_CACHE_HOME": str(cache)}


class DocSession:
    """One doc's commands, run in doc order in the doc's own folder and HOME."""

    def __init__(self, sandbox: Sandbox, doc: str) -> None:
        self.sandbox, self.doc = sandbox, doc
        base = sandbox.root / re.sub(r"\W+", "_", doc)
        self.cwd, self.home = base / "repo", base / "home"
        self.home.mkdir(parents=True)
        (base / "shared").symlink_to(sandbox.root / "shared")  # ../shared, as beside a checkout
        (self.cwd / "docs").mkdir(parents=True)
        # Files of the checkout a command reads (eval cluster's --labels), copied: nothing may write through.
        shutil.copytree(ROOT / "worker" / "evaluation" / "data", self.cwd / "worker" / "evaluation" / "data")
        # What the docs tell the user to configure: README's worker.yaml takes the camera password from
        # the environment (`DOOR_PASSWORD=... facewatch run --config worker.yaml`); the key after a rekey.
        self.env: dict[str, str] = {"DOOR_PASSWORD": "not-a-secret"}
        self.identities: list[str] = []  # ids printed by add and import, removed ones dropped
        self.visitor_ids: list[str] = []
        self.opt_out_entries: list[str] = []
        self.results: dict[int, list[Result]] = {}
        self.commands = [c for c in RUNNABLE if c.doc == doc]
        self._inputs()

    def _inputs(self) -> None:
        """The literal files the doc's commands name, made from real photos, video and data."""
        ada, *others = self.sandbox.people
        photos = {person.name: sorted(person.glob("*.jpg")) for person in self.sandbox.people}
        collins = sample_path(next(p for p in SAMPLE_PORTRAITS if p.name == "Eileen Collins"))
        links = {
            "ada1.jpg": photos[ada.name][0],
            "ada2.jpg": photos[ada.name][1],
            "photo.jpg": photos[ada.name][2],  # identify: a third photo of "Ada"
            "photo.png": collins,
            "bush_0001.jpg": sorted((SHARED_DIR / "data/lfw/images/George_W_Bush").glob("*.jpg"))[0],
            "bush_0002.jpg": sorted((SHARED_DIR / "data/lfw/images/George_W_Bush").glob("*.jpg"))[1],
            # The whole clip (`--frames 60` spreads over it): docs/watchlist.md shows what enrolling from it prints.
            "short_hamilton_clip.mp4": SHARED_DIR / "data" / "video" / "short_hamilton_clip.mp4",
            "pairs.txt": self.sandbox.root / "shared" / "data" / "lfw" / "pairs.txt",
            "pairsDevTest.txt": self.sandbox.root / "shared" / "data" / "lfw" / "pairsDevTest.txt",
        }
        for person in others:
            for index in (1, 2):
                links[f"people/{person.name.replace('_', ' ')}/{index}.jpg"] = photos[person.name][index - 1]
        for name, target in links.items():
            _link(target, self.cwd / name)
        (self.cwd / "worker.yaml").write_text(_readme_worker_yaml())
        key = self.cwd / "watchlist.key"
        key.write_text(KEY + "\n")
        key.chmod(0o600)
        if any("nn4.small2.v1.t7" in c.text for c in self.commands):
            # OpenFace's file cannot be downloaded here: one laid out as OpenFace saves it, random weights, as
            # tests/models make it (docs/models.md says so).
            from tests.models.openface_reference import build_model
            from tests.models.torch7_writer import dumps

            (self.cwd / "nn4.small2.v1.t7").write_bytes(dumps(build_model(seed=7)))
        if any(c.text.split()[1:2] == ["visitors"] for c in self.commands):
            kept = self.sandbox.visitors()
            default = self.home / ".local" / "share" / "facewatch"  # visitors.store's default
            default.mkdir(parents=True, exist_ok=True)
            shutil.copy(kept / "visitors.db", default / "visitors.db")
            shutil.copy(kept / "events.jsonl", self.cwd / "events.jsonl")

    def env_for(self, command: DocCommand) -> dict[str, str]:
        return {**_home_env(self.home, self.sandbox.root / "cache"), **dict(command.env), **self.env}

    def run_through(self, command: DocCommand) -> list[Result]:
        """Run the doc's commands up to and including ``command`` that have not run yet; ``command``'s results."""
        index = self.commands.index(command)
        for earlier in range(index + 1):
            if earlier not in self.results:
                self.results[earlier] = self._run(self.commands[earlier])
        return self.results[index]

    def _run(self, command: DocCommand) -> list[Result]:
        results = []
        for argv in PRECONDITIONS.get((command.doc, command.text), []):
            setup = invoke("facewatch", argv, self.env_for(command), self.cwd)
            assert setup.status == 0, setup.failure(f"{command.where}'s precondition", 0)
            self.observe(argv, setup)
        for tokens in alternatives(command.text):
            argv = reduce(bind(tokens, command, self))
            settings = tuple(sorted((k, v) for k, v in command.env if k.startswith("FACEWATCH_")))
            key = (command.program, tuple(argv), settings)
            if key in self.sandbox.memo and argv[:1] in (["bench"], ["eval"], ["demo"]):
                results.append(self.sandbox.memo[key])
                continue
            result = invoke(command.program, argv, self.env_for(command), self.cwd)
            self.sandbox.memo[key] = result
            self.observe(argv, result)
            results.append(result)
        return results

    def observe(self, argv: list[str], result: Result) -> None:
        """Keep what later commands refer to: printed ids, visitor ids, opt-out entries, a configured key."""
        path = command_path(argv)
        if result.status not in (0, 75):
            return
        if path[:2] == ["watchlist", "add"] or path[:2] == ["watchlist", "import"]:
            for found in UUID.findall(result.stdout):
                if found not in self.identities:
                    self.identities.append(found)
        elif path[:2] == ["watchlist", "remove"]:
            removed = json.loads(result.stdout)["removed"] if "--json" in argv else result.stdout.split()[1]
            self.identities.remove(removed)
        elif path[:2] == ["watchlist", "rekey"]:
            # "configure that key before the next command" / "remove the encryption key from the configuration"
            if "--decrypt" in argv:
                self.env.pop("FACEWATCH_WATCHLIST__ENCRYPTION_KEY_FILE", None)
            else:
                new_key = argv[argv.index("--new-key-file") + 1]
                self.env["FACEWATCH_WATCHLIST__ENCRYPTION_KEY_FILE"] = str(self.cwd / new_key)
        elif path[:2] == ["visitors", "list"]:
            for line in result.stdout.splitlines():
                found = json.loads(line)["visitor_id"] if line.startswith("{") else line.split()[0]
                if found not in self.visitor_ids:
                    self.visitor_ids.append(found)
        elif path[:2] == ["visitors", "forget"]:
            self.visitor_ids.remove(argv[-1])
        elif path[:3] == ["visitors", "opt-out", "add"]:
            self.opt_out_entries.append(result.stdout.split()[-1])
        elif path[:3] == ["visitors", "opt-out", "remove"]:
            self.opt_out_entries.remove(argv[-1])


def command_path(argv: list[str]) -> list[str]:
    """The sub-commands of a `facewatch` argument list: ``["watchlist", "add"]``."""
    parser, path = build_parser(), []
    for token in argv:
        choices = _subparsers(parser)
        if token in choices:
            parser = choices[token]
            path.append(token)
    return path


# -- binding placeholders to real inputs --------------------------------------------------------

STILLS = "../shared/data/stills"
LFW = "../shared/data/lfw"
WIDER = "../shared/data/detection/wider_val_subset200"
CLIP = "../shared/data/video/short_hamilton_clip.mp4"
PHOTOS = f"{LFW}/images/Joseph_Biden"  # a folder of photos (250x250: quick with every detector)
NUMBERS = {
    "--frames": "30",
    "--video-faces": "5",
    "--seconds": "5",
    "--min-face-size": "20",
    "--min-sharpness": "2",
    "--duplicate-distance": "0.1",
    "--at": "4.5",
    "--threads": "2",
}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PERSONS = {"ada1.jpg": "Ada Lovelace", "photo.png": "Eileen Collins"}


def bind(tokens: list[str], command: DocCommand, session: DocSession) -> list[str]:
    """A synopsis's tokens -> a concrete argument list of real inputs (see the module docstring)."""
    path: list[str] = []
    parser = build_parser()
    argv: list[str] = []
    for raw in tokens:
        token = raw.strip("[]").removesuffix("...")
        if token in ("", "GATES"):
            continue
        if token in _subparsers(parser):
            parser = _subparsers(parser)[token]
            path.append(token)
        previous = argv[-1] if argv else ""
        choices = token.split("|") if "|" in token and "://" not in token else [token]
        if choices == ["IMAGE", "DIR"]:
            argv += [f"{STILLS}/obama.jpg", PHOTOS]  # "IMAGE|DIR...": a photo and a folder of them
            continue
        token = choices[0]
        if UUID.fullmatch(token):  # an id from the example output of an earlier command
            argv += placeholder("ID", argv[-1] if argv else "", path, tokens, session)
        elif re.fullmatch(r"[A-Z][A-Z_.0-9]*", token):
            argv += placeholder(token, previous, path, tokens, session)
        else:
            argv.append(token)
    return argv


def placeholder(name: str, previous: str, path: list[str], tokens: list[str], session: DocSession) -> list[str]:
    """The real value(s) of one placeholder, by what it follows."""
    where = " ".join(path)
    if name == "NAME":
        if previous in ("--detector", "--detectors"):
            return ["hog"]
        if where == "watchlist add":
            return [PERSONS.get(next((t for t in tokens if t.endswith((".jpg", ".png"))), ""), "Ada Lovelace")]
        return ["alice"]  # admin token NAME, audit --who NAME
    if name == "ID":
        if path[:1] == ["visitors"]:
            assert session.visitor_ids, "needs a visitor id that an earlier `visitors list` printed"
            return [session.visitor_ids[-1]]
        if where == "watchlist add" and not session.identities:
            return [str(uuid.uuid4())]  # --id of a new identity
        assert session.identities, "needs the id an earlier `watchlist add` or `import` printed"
        return [session.identities[-1]]
    if name == "ENTRY":
        assert session.opt_out_entries, "needs the entry an earlier `visitors opt-out add` printed"
        return [session.opt_out_entries[-1]]
    if name == "FILE":
        if previous == "--from-video":
            return [CLIP]  # train --from-video FILE: a video
        if where == "config check":
            return ["worker.yaml"]  # README's own example
        if path[:2] == ["watchlist", "rekey"]:
            return ["watchlist.key"]
        if where == "annotate":
            return ["annotated.png" if "[--at" in tokens or "--at" in tokens else "annotated.mp4"]
        return ["watchlist.jsonl"]  # export, restore
    if name == "FILE.png":
        return ["detection_pr.png"]
    if name == "DIR":
        if where == "train":
            return [f"{LFW}/images"]  # train --data DIR: one folder per person
        if previous == "--dataset":
            return [WIDER if where == "eval detect" else LFW]
        if previous == "--strangers":
            return [WIDER]
        if previous in ("--lfw", "--distractors"):
            return [f"{LFW}/images"]
        if where == "watchlist import":
            return ["people/"]
        return [PHOTOS]  # identify photo.jpg DIR
    if name in ("IMAGE", "IMAGE_A"):
        return [f"{STILLS}/obama.jpg"]
    if name == "IMAGE_B":
        return [f"{STILLS}/two_people.jpg"]  # Obama and Biden: every face pair is compared
    if name == "PHOTO":
        if where == "bench pipeline":
            return [f"{STILLS}/{n}" for n in ("lin-manuel-miranda.png", "alex-lacamoire.png", "obama.jpg", "biden.jpg")]
        return ["photo.png"]  # visitors opt-out add: Eileen Collins, the demo's anonymous visitor
    if name == "SOURCE":
        return ["ada1.jpg"]
    if name == "VIDEO":
        return [CLIP]
    if name == "FOLDER":
        return [f"{LFW}/images"]
    if name == "PATH":
        return ["watchlist.db"]
    if name == "OUT":
        return ["nn4.small2.pt"]  # model export --format torchscript
    if name == "JSON":
        return ['{"team": "blue"}']
    if name == "NEW_NAME":
        return ["Ada King"]
    if name == "ZONE":
        return ["demo-camera"]  # the demo's camera
    if name in ("N", "PX", "S", "D", "SECONDS"):
        return [NUMBERS.get(previous, "3" if previous == "--limit" else "2")]
    raise AssertionError(f"no real input for the placeholder {name} after {previous!r} in `{where}`")


def _set_option(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag value`` at its end (in place of the doc's value, if it gave one)."""
    if flag in argv:
        at = argv.index(flag)
        argv = argv[:at] + argv[at + 2 :]
    return [*argv, flag, value]


def reduce(argv: list[str]) -> list[str]:
    """The benchmarks' own size options, so that each runs in seconds (the module docstring lists them)."""
    path = command_path(argv) if argv[:1] in (["bench"], ["eval"]) else []
    if path == ["bench", "embed"]:
        return _set_option(_set_option(argv, "--seconds", "0.05"), "--batches", "1,8")
    if path == ["bench", "detect"]:
        return _set_option(_set_option(argv, "--seconds", "0.05"), "--sizes", "320x240")
    if path == ["bench", "index"]:
        argv = _set_option(_set_option(argv, "--sizes", "1000"), "--max-calls", "10")
        return _set_option(argv, "--lfw", f"{LFW}-index")  # the default is the whole ../shared/data/lfw
    if path == ["bench", "pipeline"]:
        argv = _set_option(argv, "--frames", "10")
        return _set_option(argv, "--distractor-count", "3") if "--distractors" in argv else argv
    if path == ["bench", "compat"]:
        return _set_option(_set_option(argv, "--images", "2"), "--rounds", "1")
    if path == ["eval", "quality"]:
        return _set_option(argv, "--gallery-size", "20")  # of the mirror's 31 LFW people
    if argv[:1] == ["train"]:
        # A few optimiser steps on small batches: the command line, data, cache and files are what is tested.
        argv = _set_option(_set_option(argv, "--steps", "3" if "--resume" in argv else "2"), "--threads", "1")
        argv = _set_option(_set_option(argv, "--people", "2"), "--faces", "2")
        return _set_option(argv, "--checkpoint-every", "1") if "--checkpoint-every" in argv else argv
    if path == ["bench", "streams"]:
        argv = _set_option(_set_option(argv, "--steps", "1"), "--seconds", "2")
        return _set_option(_set_option(argv, "--warmup", "0.5"), "--sizes", "360p")
    if path == ["bench", "roofline"]:
        argv = _set_option(_set_option(argv, "--seconds", "0.1"), "--rounds", "1")
        return _set_option(_set_option(argv, "--threads", "1"), "--batch", "2")
    return argv


# -- the tests --------------------------------------------------------------------------------


def _repository_state() -> dict[str, str]:
    """Untracked files and the hash of each tracked file under docs/: what a stray write would change."""
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    state = {name: "untracked" for name in untracked}
    for path in sorted((ROOT / "docs").iterdir()):
        state[str(path.relative_to(ROOT))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Iterator[Sandbox]:
    if not has_shared_data():
        pytest.skip(SHARED_MISSING)
    root = tmp_path_factory.mktemp("docs-run")
    yield Sandbox(root, build_mirror(root / "shared"))


@pytest.fixture(scope="module")
def repository_before() -> dict[str, str]:
    return _repository_state()


def _keys_in_comment(comment: str) -> set[str]:
    """``{"image", "box"}`` in a command's comment: the keys its records have."""
    match = re.search(r"\{(\"[a-z_]+\"(?:,\s*\"[a-z_]+\")*)\}", comment)
    return set(re.findall(r"\"([a-z_]+)\"", match.group(1))) if match else set()


@pytest.mark.parametrize("command", RUNNABLE, ids=[command.where for command in RUNNABLE])
def test_a_documented_command_runs(sandbox, repository_before, command):
    results = sandbox.session(command.doc).run_through(command)
    status, says = EXPECTED_STATUS.get((command.doc, command.text), (0, ""))
    for result in results:
        assert result.status == status, result.failure(command.where, status)
        assert says in result.stderr, f"{command.where}: expected {says!r} on stderr, got {result.stderr!r}"
        check_shown_output(command, result)
        if "--json" in result.argv:
            for line in result.stdout.splitlines():
                json.loads(line)  # only JSON lines
        keys = _keys_in_comment(command.comment)
        if not keys or status != 0:  # a refusal prints no records
            continue
        records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        faces = [r for r in records if r.get("box") is not None or "box_a" in r]
        if keys:
            assert faces, f"{command.where}: `{result.shown()}` printed no record; the doc shows {sorted(keys)}"
        for record in faces:
            assert keys <= set(record), f"{command.where}: a record lacks {sorted(keys - set(record))}: {record}"


def shown_line_pattern(line: str) -> re.Pattern[str]:
    """A line of shown output as a pattern: ids (``bd30cc45-...``, shortened ``3f1c...``, template ids) and decimals
    (qualities, times) stand for any; words and counts must be as shown."""
    pattern = re.escape(line.strip())
    pattern = re.sub(r"[0-9a-f]{8}\\-[0-9a-f]{4}\\-[0-9a-f]{4}\\-[0-9a-f]{4}\\-[0-9a-f]{12}", "[0-9a-f-]{36}", pattern)
    pattern = re.sub(r"[0-9a-f]{4}\\.\\.\\.", "[0-9a-f-]{4,36}", pattern)
    pattern = re.sub(r"template\\ \d+", r"template\\ \\d+", pattern)  # template ids: the store's row ids
    pattern = re.sub(r"\d+\\.\d+", r"\\d+\\.\\d+", pattern)
    return re.compile(pattern)


def check_shown_output(command: DocCommand, result: Result) -> None:
    """Each line the doc shows the command printing (``...`` elides) is a line it printed."""
    printed = [line.strip() for line in (result.stdout + result.stderr).splitlines()]
    for line in command.output:
        if line.strip() in ("", "..."):
            continue
        pattern = shown_line_pattern(line)
        assert any(pattern.fullmatch(p) for p in printed), (
            f"{command.where}: the doc shows `{line.strip()}`; `{result.shown()}` printed:\n" + "\n".join(printed)
        )


def test_the_callers_settings_do_not_reach_a_command(sandbox, monkeypatch):
    # A developer's FACEWATCH_* (or CI's) would change what the commands do: the sandbox drops them.
    monkeypatch.setenv("FACEWATCH_WATCHLIST__STORE", "/nonexistent/watchlist.db")
    home = sandbox.root / "isolation-home"
    home.mkdir()
    result = invoke("facewatch", ["config", "show"], _home_env(home, sandbox.root / "cache"), home)
    assert result.status == 0, result.stderr
    assert f"store: {home}/.local/share/facewatch/watchlist.db" in result.stdout
    assert "/nonexistent" not in result.stdout
    assert os.environ["FACEWATCH_WATCHLIST__STORE"] == "/nonexistent/watchlist.db"  # restored after the run


def test_no_command_wrote_into_the_repository(sandbox, repository_before):
    """README's `--out docs/annotated_frame.png` and the like landed in the sandbox, not in the checkout."""
    assert _repository_state() == repository_before
    readme = sandbox.sessions.get("README.md")
    if readme is not None and readme.results:
        assert (readme.cwd / "docs" / "annotated_frame.png").is_file()
