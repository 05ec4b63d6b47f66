import torch

from ddpm_lightning.bench import bench_sampling, markdown


def test_sampling_bench_rows():
    rows = bench_sampling(num_timesteps=5, batch_size=2, repeats=2, device=torch.device("cpu"))
    assert [row["sampler"] for row in rows] == ["ddpm-5", "ddim-5", "dpm_solver-5"]
    for row in rows:
        assert row["steps"] == 5
        speed, overhead = row["images_per_s"], row["overhead"]
        assert 0 < speed["min"] <= speed["median"] <= speed["max"]
        assert 0 <= overhead["min"] <= overhead["max"] < 1
    table = markdown(rows, "header")
    assert table.count("\n| ") == 4, "a header row and one row per sampler"
