"""The memory model of sharded data parallelism (whygpu.predict.memory_model): bytes per parameter per ZeRO stage,
per-rank bytes with the last shard padded, and the devices a 7B and a 70B model need, each against numbers worked by
hand."""

from __future__ import annotations

import json

import pytest

from whygpu.predict import memory_model as mm


@pytest.mark.parametrize(
    "stage, P, want",
    [
        ("none", 4, (4, 4, 8)),
        ("optimizer", 4, (4, 4, 2)),  # 8/4
        ("gradients", 4, (4, 1, 2)),  # 4/4, 8/4
        ("parameters", 4, (1, 1, 2)),  # (4 + 4 + 8)/4
        ("gradients", 1, (4, 4, 8)),  # one rank: sharding changes nothing
    ],
)
def test_fp32_adam_bytes_per_param(stage, P, want):
    b = mm.bytes_per_param(stage, P)
    assert (b["params"], b["grads"], b["optimizer"]) == pytest.approx(want)
    assert b["total"] == pytest.approx(sum(want))


def test_mixed_precision_is_the_zero_papers_2_2_12():
    assert mm.bytes_per_param("none", 8, "mixed")["total"] == 16  # 2 + 2 + 12: the paper's 16 Psi
    b = mm.bytes_per_param("optimizer", 8, "mixed")
    assert (b["params"], b["grads"], b["optimizer"]) == pytest.approx((2, 2, 1.5))  # 12/8
    assert mm.bytes_per_param("gradients", 8, "mixed")["total"] == pytest.approx(2 + 0.25 + 1.5)
    assert mm.bytes_per_param("parameters", 64, "mixed")["total"] == pytest.approx(16 / 64)
    # the paper's worked example (fig. 1): 7.5B parameters, 64 GPUs, stage 1 = 31.4 GB, stage 2 = 16.6 GB
    n = 7_500_000_000
    assert mm.rank_bytes(n, "none", 64, "mixed", pad=False)["total"] / 1e9 == pytest.approx(120)
    assert mm.rank_bytes(n, "optimizer", 64, "mixed", pad=False)["total"] / 1e9 == pytest.approx(31.4, abs=0.05)
    assert mm.rank_bytes(n, "gradients", 64, "mixed", pad=False)["total"] / 1e9 == pytest.approx(16.6, abs=0.05)
    assert mm.rank_bytes(n, "parameters", 64, "mixed", pad=False)["total"] / 1e9 == pytest.approx(1.875)


def test_optimizer_state_depends_on_the_optimizer():
    assert mm.bytes_per_param("none", 1, optimizer="sgd")["optimizer"] == 0
    assert mm.bytes_per_param("none", 1, optimizer="momentum")["optimizer"] == 4
    assert mm.bytes_per_param("none", 1, "mixed", optimizer="sgd")["optimizer"] == 4  # the fp32 master copy


def test_rank_bytes_pads_the_last_shard():
    # 10 parameters over 3 ranks: shards of ceil(10/3) = 4 elements, the last padded by 2
    assert mm.shard_elements(10, 3) == 4
    b = mm.rank_bytes(10, "gradients", 3)
    assert (b["params"], b["grads"], b["optimizer"], b["total"]) == (40, 16, 32, 88)
    assert mm.rank_bytes(10, "gradients", 3, pad=False)["grads"] == pytest.approx(40 / 3)
    # the MLP the issue measures, 5,824,522 parameters, fp32 Adam at P = 2: optimizer state 0.5x
    n = 5_824_522
    none, one = mm.rank_bytes(n, "none", 2), mm.rank_bytes(n, "optimizer", 2)
    assert none["optimizer"] == 8 * n and one["optimizer"] == 8 * 2_912_261
    assert one["optimizer"] / none["optimizer"] == 0.5


@pytest.mark.parametrize(
    "n, device, precision, want",
    [
        # 7B fp32 on 80 GB: none 112 GB never fits; stage 1: 56 + 56/P <= 80 -> P = 3 (2.33); stage 2:
        # 28 + 84/P <= 80 -> P = 2 (1.62); stage 3: 112/P <= 80 -> 2
        (7e9, 80e9, "fp32", (None, 3, 2, 2)),
        (7e9, 141e9, "fp32", (1, 1, 1, 1)),  # 112 GB fits one H200
        # 7B mixed on 80 GB: stage 1: 28 + 84/P -> 2; stage 2: 14 + 98/P <= 80 -> 2
        (7e9, 80e9, "mixed", (None, 2, 2, 2)),
        # 70B fp32: the unsharded parts (stage 2: 280 GB of parameters) never fit; stage 3: 1120/80 = 14,
        # 1120/141 = 7.94 -> 8
        (70e9, 80e9, "fp32", (None, None, None, 14)),
        (70e9, 141e9, "fp32", (None, None, None, 8)),
        # 70B mixed on 141 GB, stage 2: 140 GB of fp16 parameters + 980 GB / P <= 141 GB -> P = 980 exactly
        (70e9, 141e9, "mixed", (None, None, 980, 8)),
    ],
)
def test_devices_needed_worked_by_hand(n, device, precision, want):
    got = tuple(mm.devices_needed(int(n), device, s, precision)["devices"] for s in mm.STAGES)
    assert got == want
    for s, p in zip(mm.STAGES, got):
        d = mm.devices_needed(int(n), device, s, precision)
        if p is None:
            assert "at any P" in d["why"] and "params" in d["why"]
        else:
            assert d["per_rank_bytes"] <= device
            if p > 1:  # one fewer does not fit
                assert mm.rank_bytes(int(n), s, p - 1, precision, pad=False)["total"] > device


def test_extrapolation_document():
    doc = mm.extrapolate_memory()
    json.dumps(doc, allow_nan=False)
    assert len(doc["rows"]) == 2 * 2 * 2  # 2 models x 2 precisions x 2 devices
    assert "activations" in doc["not_counted"] and "SC 2020" in doc["source"]
    row = next(r for r in doc["rows"] if r["model"] == "7B model" and r["precision"] == "fp32" and "80" in r["device"])
    assert row["unsharded_bytes"] == 112e9 and row["optimizer"]["devices"] == 3


@pytest.mark.parametrize(
    "call",
    [
        lambda: mm.bytes_per_param("zero4", 2),
        lambda: mm.bytes_per_param("none", 0),
        lambda: mm.bytes_per_param("none", 2, "fp8"),
        lambda: mm.bytes_per_param("none", 2, optimizer="lion"),
        lambda: mm.rank_bytes(-1, "none", 2),
        lambda: mm.devices_needed(10, 0, "none"),
    ],
)
def test_bad_input_is_a_clear_error(call):
    with pytest.raises(ValueError, match="must be"):
        call()
