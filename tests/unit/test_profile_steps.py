"""bench/gpu/profile_steps.py: what a scheduled batch counts as, how long each batch took under
async scheduling, and the fit of the step-time model. FakeScheduler stands in for vLLM's scheduler:
requests with vLLM's counters, batches handed out and returned as the test says."""
from types import SimpleNamespace

import pytest

from bench.gpu.profile_steps import COEFFICIENTS, FEATURES, PROPOSED, Step, StepRecorder, fit, samples_of


class FakeScheduler:
    """Counts computed tokens at schedule time, as vLLM's scheduler does."""

    def __init__(self, prompts: dict[str, tuple[int, int]]):  # id -> (prompt tokens, computed before)
        self.requests = {request_id: SimpleNamespace(num_prompt_tokens=prompt, num_computed_tokens=computed)
                         for request_id, (prompt, computed) in prompts.items()}
        self.next_batch: dict[str, int] = {}

    def schedule(self):
        for request_id, tokens in self.next_batch.items():
            self.requests[request_id].num_computed_tokens += tokens
        return SimpleNamespace(num_scheduled_tokens=dict(self.next_batch),
                               total_num_scheduled_tokens=sum(self.next_batch.values()))

    def update_from_output(self, scheduler_output, model_output):
        return {}


def test_a_batch_counts_prefill_chunks_decodes_and_their_context():
    # a: a prompt of 1000 with 512 cached (a prefix hit); b: the second chunk of a 3000-token prompt;
    # c and d: decoding with 200 and 4000 tokens so far
    scheduler = FakeScheduler({"a": (1000, 512), "b": (3000, 2048), "c": (100, 199), "d": (10, 3999)})
    recorder = StepRecorder(scheduler)
    scheduler.next_batch = {"a": 488, "b": 952, "c": 1, "d": 1}
    output = scheduler.schedule()
    assert recorder.in_flight[id(output)][3] == (488 + 952, 2, 200 + 4000, 488 * 1000 + 952 * 3000, 2)


def test_a_batch_takes_from_when_the_one_before_returned_under_async_scheduling(monkeypatch):
    clock = iter([0.0, 0.001, 0.010, 0.011, 0.018])  # schedule A, schedule B, A back, schedule C, B back
    monkeypatch.setattr("bench.gpu.profile_steps.time.perf_counter", lambda: next(clock))
    scheduler = FakeScheduler({"x": (100, 0)})
    recorder = StepRecorder(scheduler)
    recorder.label = ("prefill", "100")
    scheduler.next_batch = {"x": 100}
    first = scheduler.schedule()
    scheduler.next_batch = {"x": 1}
    second = scheduler.schedule()
    scheduler.update_from_output(first, None)
    scheduler.schedule()
    scheduler.update_from_output(second, None)
    assert [(s.prefill_tokens, s.decode_seqs, round(s.step_s, 6)) for s in recorder.steps] == [
        (100, 0, 0.010),  # scheduled at 0, back at 0.010
        (0, 1, 0.008),  # scheduled at 0.001 but the GPU was busy with A until 0.010
    ]


def test_unlabelled_and_empty_batches_are_not_samples():
    scheduler = FakeScheduler({"x": (100, 0)})
    recorder = StepRecorder(scheduler)
    scheduler.next_batch = {"x": 100}
    scheduler.update_from_output(scheduler.schedule(), None)  # warm-up: no label
    recorder.label = ("decode", "1x100")
    scheduler.next_batch = {}
    scheduler.update_from_output(scheduler.schedule(), None)
    assert recorder.steps == []


def steps_from(coefficients: dict, rows: list[tuple[str, int, int, int, int]]) -> list[Step]:
    return [Step(family, str(features), *features, int(features[0] > 0), coefficients["constant_s"] + sum(
        coefficients[name] * value for name, value in zip(COEFFICIENTS[1:], features)))
        for family, *features in rows]


def test_the_fit_recovers_the_costs_the_steps_were_made_with():
    truth = {"constant_s": 0.004, "per_prefill_token_s": 2e-5, "per_decode_seq_s": 1e-4, "per_kv_token_s": 3e-8,
             "per_prefill_attention_s": 1e-9}
    rows = [("prefill", n, 0, 0, n * n) for n in (128, 512, 2048, 4096)]
    rows += [("decode", 0, b, b * c, 0) for b in (1, 16, 128) for c in (128, 2048)]
    rows += [("mixed", 256, 64, 64 * 512, 256 * 256), ("prefix", 64, 0, 0, 64 * 2112)]
    coefficients, quality, _ = fit(samples_of(steps_from(truth, rows)))
    assert coefficients == pytest.approx(truth, rel=1e-6)
    assert quality["median_abs_error_pct"] < 1e-6 and quality["r2"] == pytest.approx(1.0)
    assert set(quality["families"]) == {"prefill", "decode", "mixed", "prefix"}


def test_a_cost_per_prompt_chunk_is_fitted_when_asked_for():
    steps = [Step("prefill", str(n), n, 0, 0, n * n, 1, 0.25 + 1e-3 * n) for n in (128, 512, 2048)]
    steps += [Step("decode", str(b), 0, b, 100 * b, 0, 0, 0.005 + 5e-3 * b) for b in (1, 16, 64)]
    extra, quality, _ = fit(samples_of(steps), (*FEATURES, PROPOSED[0]), (*COEFFICIENTS, PROPOSED[1]))
    assert extra["per_prefill_seq_s"] == pytest.approx(0.245, rel=1e-6)
    assert quality["median_abs_error_pct"] < 1e-6


def test_no_cost_comes_out_negative():
    # Decode steps that get faster with more context (noise): the KV term is left out, not negative.
    steps = [Step("decode", f"{b}x{c}", 0, b, b * c, 0, 0, 0.005 + 1e-4 * b - 1e-9 * b * c)
             for b in (1, 8, 64) for c in (128, 4096)]
    steps += [Step("prefill", str(n), n, 0, 0, n * n, 1, 0.005 + 2e-5 * n) for n in (128, 1024, 4096)]
    coefficients, _, _ = fit(samples_of(steps))
    assert min(coefficients.values()) >= 0
    assert coefficients["per_decode_seq_s"] > 0 and coefficients["per_prefill_token_s"] > 0


def test_steps_of_a_point_are_one_sample_and_other_compositions_are_left_out():
    steps = [Step("decode", "4x128", 0, 4, 4 * (128 + i), 0, 0, t) for i, t in enumerate([1.0, 9.0, 2.0, 3.0, 2.5])]
    steps.append(Step("decode", "4x128", 64, 4, 512, 4096, 1, 5.0))  # a prefill in a decode run: not a sample
    [sample] = samples_of(steps)
    assert sample["step_s"] == 2.5 and sample["steps"] == 5 and sample["kv_tokens"] == 4 * 130
    assert set(FEATURES) <= set(sample)
