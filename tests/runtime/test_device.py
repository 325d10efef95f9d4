"""The torch device helpers: threads for the streaming pipeline."""


def test_the_pipeline_gives_each_lane_its_share_of_the_cores():
    from worker.runtime.device import pipeline_torch_threads

    assert pipeline_torch_threads(2, cores=2) == 1
    assert pipeline_torch_threads(2, cores=16) == 8
    assert pipeline_torch_threads(4, cores=2) == 1  # never 0
    assert pipeline_torch_threads(1, cores=3) == 3
