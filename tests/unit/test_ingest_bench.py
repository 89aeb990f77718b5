"""The producer benchmark's sample generator (the run itself is exercised by `tapas bench producer --quick`)."""

from __future__ import annotations

from bench.producer import NUM_GPUS, simulated_samples
from contracts import GpuSample, decode


def test_simulated_samples_are_valid_eight_gpu_contract_messages() -> None:
    samples = simulated_samples(20, num_servers=5)
    assert {s.server_id for s in samples} == {f"srv-{i:04d}" for i in range(5)}
    for s in samples:
        assert len(s.gpus) == NUM_GPUS
        assert decode(GpuSample, s.to_bytes()) == s


def test_simulated_samples_repeat_under_a_seed() -> None:
    assert simulated_samples(3, seed=4) == simulated_samples(3, seed=4)
    assert simulated_samples(3, seed=4) != simulated_samples(3, seed=5)


def test_encode_message_is_the_contract_wire_format() -> None:
    from ingest.producer import encode_message
    from tests.samples import example_messages

    for msg in [*example_messages(), *simulated_samples(3)]:
        assert encode_message(msg) == msg.to_bytes()
