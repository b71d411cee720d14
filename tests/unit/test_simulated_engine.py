"""The simulated engine as the engine worker drives it: admission, steps that take the profile's time,
stop conditions, the scheduler's figures for the load tracker, KV-cache events through the same
CacheIndex as vLLM's, the step loop on top, and an engine worker that never imports vLLM."""
import json
import threading
import time
from pathlib import Path

import msgspec
import pytest

from common.blocks import block_hashes
from common.config import ROOT, InferenceConfig
from common.messages import Add, Goodbye, ResetPrefixCache
from common.preflight import StartRefused, check_simulator
from common.step_time import Served, StepTime, StepWork, load_profile
from engine_worker.cache_events import CacheIndex
from engine_worker.load import LoadTracker
from engine_worker.simulator.admission import SimulatedRequests
from engine_worker.simulator.engine import SimulatedEngine
from engine_worker.simulator.shape import EngineShape, engine_shape
from engine_worker.simulator.shared_gpu import SharedGpu, shared_gpu
from engine_worker.simulator.vocabulary import Vocabulary, read_vocabulary
from engine_worker.step_loop import StepLoop
from tests.unit.test_step_loop import FakePublisher

FIXTURE_PROFILE = ROOT / "tests/fixtures/step-time-profile-fixture.json"
# A vocabulary of 40 ids: 0-3 special, 3 the tokenizer's EOS, 1 another EOS of the model's configs.
VOCABULARY = Vocabulary(size=40, eos_token_id=3, stop_ids=frozenset({1, 3}), special_ids=frozenset({0, 1, 2, 3}))
STEP_TIME = StepTime(constant_s=0.001, per_prefill_token_s=1e-4, per_decode_seq_s=1e-3, per_kv_token_s=1e-5,
                     per_prefill_attention_s=1e-6)


def shape(**changes) -> EngineShape:
    values = dict(max_num_seqs=8, max_num_batched_tokens=64, block_size=4, num_gpu_blocks=64, max_model_len=128,
                  enable_prefix_caching=True, enable_chunked_prefill=True, max_logprobs=20)
    return EngineShape(**{**values, **changes})


def engine(eos_probability=0.0, seed=0, stat_loggers=(), report_kv_events=False, gpu=None, served=None,
           **shape_changes) -> SimulatedEngine:
    return SimulatedEngine(shape(**shape_changes), VOCABULARY, STEP_TIME, time_scale=0.0, seed=seed,
                           eos_probability=eos_probability, stat_loggers=stat_loggers,
                           report_kv_events=report_kv_events, served=served, gpu=gpu)


def add(simulated: SimulatedEngine, request_id: str, prompt: list[int], **sampling) -> None:
    admitted = SimulatedRequests(simulated)(Add(request_id, "fe~1", prompt, sampling), 0.0)
    simulated.add_request(request_id, admitted.prompt, admitted.params)


def run(simulated: SimulatedEngine) -> dict[str, tuple[list[int], str, int | None]]:
    """Step until every request ended: each one's tokens, finish_reason and stop_reason."""
    ended, tokens = {}, {}
    while simulated.has_unfinished_requests():
        for output in simulated.step():
            completion = output.outputs[0]
            tokens.setdefault(output.request_id, []).extend(completion.token_ids)
            if output.finished:
                ended[output.request_id] = (tokens[output.request_id], completion.finish_reason,
                                            completion.stop_reason)
    return ended


def test_the_step_time_is_the_profiles_model_of_what_the_step_computed():
    work = StepWork(prefill_tokens=4, decode_seqs=1, kv_tokens=11, prefill_attention=48)
    assert STEP_TIME.seconds(work) == pytest.approx(0.001 + 4e-4 + 1e-3 + 11e-5 + 48e-6)
    simulated = engine()
    simulated.time_scale = 2.0
    slept = []
    simulated.sleep = slept.append  # records the sleep instead of taking it

    def step_within_its_modelled_time(work: StepWork) -> None:
        started = time.monotonic()
        simulated.step()
        modelled = 2.0 * STEP_TIME.seconds(work)
        assert modelled - (time.monotonic() - started) <= slept[-1] <= modelled

    add(simulated, "a", list(range(10, 20)), max_tokens=5, ignore_eos=True)
    step_within_its_modelled_time(StepWork(10, 0, 0, 100))  # a's 10-token prompt: 10 x 10 of attention
    add(simulated, "b", [*range(10, 18), 30, 31, 32, 33], max_tokens=5, ignore_eos=True)
    # a decodes with 11 tokens in KV; b computes 4 tokens after its 8-token prefix hit.
    step_within_its_modelled_time(work)


def test_engines_that_cuda_visible_devices_puts_on_one_gpu_share_its_lock_file(tmp_path):
    four = msgspec.convert({"engine_args": {"data_parallel_size": 4}, "cuda_visible_devices": "0,0,1,1"},
                           InferenceConfig)
    gpus = [shared_gpu(four, rank, tmp_path) for rank in range(4)]
    assert gpus[0].lock_file == gpus[1].lock_file == tmp_path / "simulated-gpu-0.lock"
    assert gpus[2].lock_file == gpus[3].lock_file == tmp_path / "simulated-gpu-1.lock"
    own = msgspec.convert({"engine_args": {"data_parallel_size": 2}, "cuda_visible_devices": "0,1"}, InferenceConfig)
    assert shared_gpu(own, 0, tmp_path) is None and shared_gpu(InferenceConfig(), 0, tmp_path) is None


def test_a_step_on_a_shared_gpu_waits_for_its_turn_and_pays_the_switch_only_after_another_engine(tmp_path):
    lock_file = tmp_path / "simulated-gpu-0.lock"
    simulated = engine(gpu=SharedGpu(lock_file), served=Served(gpu_switch_s=0.25))
    simulated.time_scale = 2.0
    now, calls, slept = [100.0], [], []
    simulated.clock = lambda: calls.append(now[0]) or now[0]
    simulated.sleep = lambda seconds: slept.append(seconds) or now.__setitem__(0, now[0] + seconds)
    add(simulated, "a", list(range(10, 20)), max_tokens=3, ignore_eos=True)
    gpu_s = 2.0 * STEP_TIME.seconds(StepWork(10, 0, 0, 100))
    with SharedGpu(lock_file):  # another engine's step holds the GPU
        stepping = threading.Thread(target=simulated.step)
        stepping.start()
        while not calls:  # the step started at 100.0
            time.sleep(0.001)
        now[0] = 105.0  # the other engine's step takes 5 s
        stepping.join(0.2)
        assert stepping.is_alive()  # its turn has not come
    stepping.join(10)
    switch_s = 2.0 * 0.25
    assert slept == [pytest.approx(gpu_s + switch_s), 0.0]  # the switch and its own GPU time, from its turn
    assert simulated.time_kept.modelled_s == pytest.approx(5.0 + switch_s + gpu_s)  # the wait, then its own
    simulated.step()  # nobody else holds the GPU: its own time only, no switch
    assert simulated.time_kept.modelled_s == pytest.approx(5.0 + switch_s + gpu_s
                                                           + 2.0 * STEP_TIME.seconds(StepWork(0, 1, 11, 0)))


class SlowHost:
    """A fake clock for one simulated engine: each step's sleep overruns by `overrun_s`, and the
    engine worker's loop takes `between_s` between steps."""

    def __init__(self, simulated: SimulatedEngine, overrun_s: float, between_s: float):
        self.now, self.overrun_s, self.between_s = 100.0, overrun_s, between_s
        simulated.clock = lambda: self.now
        simulated.sleep = self.sleep

    def sleep(self, seconds: float) -> None:
        self.now += seconds + self.overrun_s

    def step(self, simulated: SimulatedEngine) -> None:
        self.outputs = simulated.step()
        self.now += self.between_s


def test_the_time_kept_counts_overrun_sleeps_and_the_loop_between_busy_steps_but_not_idle_time():
    load = LoadTracker(monitor_gpus=False)
    simulated = engine(stat_loggers=[load.stat_logger_factory(base=object)])
    simulated.time_scale = 2.0
    host = SlowHost(simulated, overrun_s=0.001, between_s=0.004)
    add(simulated, "a", list(range(10, 20)), max_tokens=3, ignore_eos=True)
    for _ in range(3):  # a's prompt and first token, then two tokens: its end
        host.step(simulated)
    modelled = 2.0 * sum(STEP_TIME.seconds(work) for work in (StepWork(10, 0, 0, 100), StepWork(0, 1, 11, 0),
                                                             StepWork(0, 1, 12, 0)))
    # Each step overran by 1 ms; the loop's 4 ms between steps counted twice: the last left nothing to do.
    assert load.load.simulated_modelled_s_total == pytest.approx(modelled)
    assert load.load.simulated_busy_s_total == pytest.approx(modelled + 3 * 0.001 + 2 * 0.004)
    host.now += 60.0  # idle: not the simulation's time
    add(simulated, "b", list(range(30, 34)), max_tokens=1, ignore_eos=True)
    host.step(simulated)
    modelled += 2.0 * STEP_TIME.seconds(StepWork(4, 0, 0, 16))
    assert load.load.simulated_busy_s_total == pytest.approx(modelled + 4 * 0.001 + 2 * 0.004)


def first_token_times(simulated: SimulatedEngine, host: SlowHost) -> dict[str, float]:
    """Step until every request ended: when each one's first token came out, on the host's clock."""
    firsts = {}
    while simulated.has_unfinished_requests():
        host.step(simulated)
        for output in host.outputs:
            firsts.setdefault(output.request_id, host.now)
    return firsts


def test_a_served_request_reaches_the_scheduler_after_the_first_token_latency_and_a_burst_together():
    simulated = engine()
    simulated.time_scale = 2.0
    simulated.served = Served(first_token_s=0.010)
    host = SlowHost(simulated, overrun_s=0.0, between_s=0.0)
    for request_id, first in (("a", 10), ("b", 20), ("c", 30)):
        add(simulated, request_id, list(range(first, first + 10)), max_tokens=2, ignore_eos=True)
    simulated.abort_request(["c"])  # aborted before it reached the scheduler: it never runs
    assert simulated.has_unfinished_requests()
    # a and b reach the scheduler at 100.020 (2 x 10 ms) and are prefilled in one step.
    both = 100.020 + 2.0 * STEP_TIME.seconds(StepWork(20, 0, 0, 200))
    assert first_token_times(simulated, host) == pytest.approx({"a": both, "b": both})


def first_token_steps(simulated: SimulatedEngine, added_after_step: dict[int, tuple]) -> dict[str, int]:
    """Step until every request ended, adding each of `added_after_step` (step number: add's arguments) after
    that step: the step that gave each request's first token."""
    firsts, number = {}, 0
    while simulated.has_unfinished_requests() or number in added_after_step:
        if number in added_after_step:
            add(simulated, *added_after_step[number][:2], max_tokens=added_after_step[number][2], ignore_eos=True)
        number += 1
        for output in simulated.step():
            firsts.setdefault(output.request_id, number)
    return firsts


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_under_async_scheduling_a_request_that_arrives_while_a_step_computes_waits_one_more_step(async_scheduling):
    """vLLM's async scheduler schedules a step while the one before it computes: b, sent during a's first
    decoding step, misses the schedule made then. An idle engine schedules what comes at once."""
    simulated = engine(async_scheduling=async_scheduling)
    host = SlowHost(simulated, overrun_s=0.0, between_s=0.0)
    simulated.time_scale = 1.0
    firsts = first_token_steps(simulated, {0: ("a", list(range(10, 20)), 4), 1: ("b", list(range(30, 40)), 1)})
    assert firsts == {"a": 1, "b": 3 if async_scheduling else 2}
    assert host.now > 100.0 and simulated.kv.usage() == 0.0  # every block given back at the end


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_under_async_scheduling_the_blocks_of_a_finished_request_come_back_a_step_later(async_scheduling):
    """6 blocks of 4 tokens: d (1 block, decoding) and a (2 blocks, one token) run; c's 4 blocks wait for
    a's. vLLM frees a's blocks when it reads a's step's output, after it has scheduled the next step."""
    simulated = engine(async_scheduling=async_scheduling, num_gpu_blocks=7, max_model_len=24)
    SlowHost(simulated, overrun_s=0.0, between_s=0.0)
    simulated.time_scale = 1.0
    for request_id, prompt, max_tokens in (("d", [5, 6, 7, 8], 8), ("a", list(range(10, 18)), 1),
                                           ("c", list(range(20, 36)), 1)):
        add(simulated, request_id, prompt, max_tokens=max_tokens, ignore_eos=True)
    assert first_token_steps(simulated, {}) == {"d": 1, "a": 1, "c": 3 if async_scheduling else 2}


def test_under_async_scheduling_with_nothing_else_to_run_a_waiting_request_takes_freed_blocks_at_once():
    """a alone holds the blocks c needs: with no step to queue behind a's, vLLM waits for a's output and
    schedules c at once with a's blocks back."""
    firsts = {}
    for async_scheduling in (False, True):
        simulated = engine(async_scheduling=async_scheduling, num_gpu_blocks=5, max_model_len=16)
        SlowHost(simulated, overrun_s=0.0, between_s=0.0)
        simulated.time_scale = 1.0
        add(simulated, "a", list(range(10, 18)), max_tokens=1, ignore_eos=True)
        add(simulated, "c", list(range(20, 32)), max_tokens=1, ignore_eos=True)
        firsts[async_scheduling] = first_token_steps(simulated, {})
    assert firsts[True] == firsts[False] == {"a": 1, "c": 2}


def test_a_served_step_takes_at_least_its_cpu_time_for_the_sequences_decoding():
    simulated = engine()
    simulated.served = Served(cpu_per_decode_seq_s=0.01)
    simulated.time_scale = 1.0
    slept = []
    simulated.sleep = slept.append
    add(simulated, "a", list(range(10, 14)), max_tokens=3, ignore_eos=True)
    add(simulated, "b", list(range(20, 24)), max_tokens=3, ignore_eos=True)
    simulated.step()  # both prompts: no sequence decoding, the GPU's time
    assert slept[-1] == pytest.approx(STEP_TIME.seconds(StepWork(8, 0, 0, 32)), abs=1e-3)
    simulated.step()  # two sequences decoding: 20 ms of CPU against the GPU's 3.1 ms
    assert STEP_TIME.seconds(StepWork(0, 2, 10, 0)) < 0.02
    assert slept[-1] == pytest.approx(0.02, abs=1e-3)


def test_a_profile_is_read_and_a_bad_one_refused_with_the_reason(tmp_path):
    profile = load_profile(FIXTURE_PROFILE)
    assert profile.engine_args["num_gpu_blocks"] == 50000 and profile.step_time.constant_s > 0
    broken = json.loads(FIXTURE_PROFILE.read_text())
    del broken["step_time"]["per_kv_token_s"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="per_kv_token_s"):
        load_profile(tmp_path / "broken.json")
    (tmp_path / "future.json").write_text(json.dumps({**json.loads(FIXTURE_PROFILE.read_text()), "format": 2}))
    with pytest.raises(ValueError, match="format 2"):
        load_profile(tmp_path / "future.json")
    with pytest.raises(ValueError, match="cannot read"):
        load_profile(tmp_path / "missing.json")


@pytest.mark.parametrize("path", sorted((ROOT / "bench" / "profiles").glob("*.json")), ids=lambda path: path.name)
def test_every_profile_the_repository_keeps_is_one_a_simulated_engine_reads(path):
    profile = load_profile(path)
    assert profile.step_time.seconds(StepWork(1024, 8, 8192, 1024 * 1024)) > profile.step_time.constant_s
    assert profile.samples and all(sample.step_s > 0 for sample in profile.samples)


def test_eos_ends_a_request_once_min_tokens_are_out_unless_eos_is_ignored():
    simulated = engine(eos_probability=1.0)
    add(simulated, "eos", [5, 6, 7], max_tokens=10, min_tokens=2)
    add(simulated, "ignored", [5, 6, 7], max_tokens=6, ignore_eos=True)
    ended = run(simulated)
    tokens, finish, stop = ended["eos"]
    assert len(tokens) == 3 and tokens[-1] == 3 and (finish, stop) == ("stop", None)
    assert 3 not in tokens[:-1]
    tokens, finish, _ = ended["ignored"]
    assert len(tokens) == 6 and finish == "length" and 3 not in tokens


def test_a_stop_token_id_ends_a_request_only_past_min_tokens_and_is_its_stop_reason():
    simulated = engine()
    add(simulated, "r", [5, 6], max_tokens=100, min_tokens=4, stop_token_ids=[7], allowed_token_ids=[7, 8])
    tokens, finish, stop = run(simulated)["r"]
    assert (finish, stop) == ("stop", 7) and tokens[-1] == 7 and len(tokens) >= 5
    assert set(tokens[:4]) == {8}
    # The model's other EOS ids (its generation config's) stop it too, unless EOS is ignored.
    add(simulated, "other-eos", [5, 6], max_tokens=5, allowed_token_ids=[1])
    add(simulated, "ignoring", [5, 6], max_tokens=5, allowed_token_ids=[1], ignore_eos=True)
    ended = run(simulated)
    assert ended["other-eos"] == ([1], "stop", 1)
    assert ended["ignoring"] == ([1] * 5, "length", None)


def test_tokens_are_ordinary_ids_of_the_vocabulary_and_a_seed_repeats_them():
    first, second, other = engine(seed=1), engine(seed=1), engine(seed=2)
    for simulated in (first, second, other):
        add(simulated, "r", [5, 6], max_tokens=100, ignore_eos=True)
        add(simulated, "seeded", [5, 6], max_tokens=20, ignore_eos=True, seed=42)
    runs = [run(simulated) for simulated in (first, second, other)]
    tokens = runs[0]["r"][0]
    assert all(4 <= token < 40 for token in tokens)  # no special token, no id past the vocabulary
    assert runs[1]["r"][0] == tokens and runs[2]["r"][0] != tokens
    assert runs[0]["seeded"] == runs[1]["seeded"] == runs[2]["seeded"]


def test_logprobs_give_the_drawn_token_first_and_the_next_most_likely_ones():
    simulated = engine()
    add(simulated, "r", [5, 6], max_tokens=3, ignore_eos=True, logprobs=4)
    outputs = [output for _ in range(3) for output in simulated.step()]
    for output in outputs:
        completion = output.outputs[0]
        [entries] = completion.logprobs
        ranked = sorted(entries.items(), key=lambda item: item[1].rank)
        assert [entry.rank for _, entry in ranked] == [1, 2, 3, 4]
        assert ranked[0][0] == completion.token_ids[0]
        assert all(a[1].logprob >= b[1].logprob for a, b in zip(ranked, ranked[1:]))


@pytest.mark.parametrize("prompt, sampling, reason", [
    ([], {}, "prompt cannot be empty"),
    ([5, 40], {}, "Token id 40 in the prompt is out of vocabulary"),
    ([5, -1], {}, "Token id -1"),
    ([5] * 100, {"max_tokens": 29}, "more than the maximum model length of 128"),
    ([5], {"max_tokens": 0}, "max_tokens must be at least 1"),
    ([5], {"max_tokens": 2, "min_tokens": 3}, "min_tokens must be between 0 and max_tokens=2"),
    ([5], {"logprobs": 21}, "logprobs of 21"),
    ([5], {"allowed_token_ids": [41]}, "Token id 41 in allowed_token_ids"),
    ([5], {"allowed_token_ids": []}, "allowed_token_ids is not None and empty"),
    ([5], {"structured_outputs": {"json": {}}}, "does not model structured outputs"),
    ([5], {"prompt_logprobs": 1}, "does not model prompt logprobs"),
    ([5], {"n": 2}, "n must be 1"),
    ([5], {"temperature": "hot"}, "Expected `float`, got `str` - at `\\$.temperature`"),
    ([5], {"no_such_parameter": 1}, "unknown field `no_such_parameter`"),
])
def test_admission_refuses_what_vllm_or_the_simulation_cannot_take(prompt, sampling, reason):
    with pytest.raises(ValueError, match=reason):
        SimulatedRequests(engine())(Add("r", "fe~1", prompt, sampling), 0.0)


def test_admission_refuses_a_lora_adapter_and_takes_what_only_shapes_a_real_models_choice():
    admit = SimulatedRequests(engine())
    with pytest.raises(ValueError, match="serves no LoRA adapters"):
        admit(Add("r", "fe~1", [5], {}, lora="sql"), 0.0)
    taken = {"temperature": 0.2, "top_p": 0.5, "top_k": 3, "min_p": 0.1, "presence_penalty": 1.0,
             "frequency_penalty": 1.0, "repetition_penalty": 1.1, "logit_bias": {5: 1.0}, "bad_words": ["x"]}
    assert admit(Add("r", "fe~1", [5, 6], {**taken, "max_tokens": 127 - 1}), 0.0).prompt.token_ids == [5, 6]


def test_the_stat_logger_gets_the_schedulers_figures_and_the_prefix_caches_lookups():
    load = LoadTracker(monitor_gpus=False)
    simulated = engine(stat_loggers=[load.stat_logger_factory(base=object)], max_num_seqs=2)
    shared = list(range(4, 20))  # four full blocks
    for name in "abc":
        add(simulated, name, [*shared, 30], max_tokens=4, ignore_eos=True)
    simulated.step()
    # a computed 17 tokens; b found a's four blocks, cached as they were allocated; c waits (max_num_seqs 2).
    assert (load.load.running, load.load.waiting) == (2, 1)
    assert (load.load.prefix_cache_queries_total, load.load.prefix_cache_hits_total) == (34, 16)
    assert load.load.kv_cache_usage == pytest.approx(6 / 63)  # 4 shared + 1 each; block 0 is never used
    run(simulated)
    assert (load.load.prefix_cache_queries_total, load.load.prefix_cache_hits_total) == (51, 32)
    assert (load.load.running, load.load.waiting, load.load.kv_cache_usage) == (0, 0, 0.0)


def test_kv_cache_events_become_the_routers_hashes_of_the_prompts_blocks():
    simulated = engine(report_kv_events=True, num_gpu_blocks=9)  # 8 usable blocks of 4 tokens
    index = CacheIndex("engine-1", 4)
    prompt = list(range(4, 17))  # 3 full blocks and a token
    add(simulated, "a", prompt, max_tokens=1, ignore_eos=True)
    run(simulated)
    change = index.apply(simulated.kv_events.get_nowait())
    assert change.stored == block_hashes(prompt, 4) and change.removed == []
    other = list(range(39, 7, -1))  # 8 blocks: a's three cached ones are evicted, its last first
    add(simulated, "b", other, max_tokens=1, ignore_eos=True)
    run(simulated)
    change = index.apply(simulated.kv_events.get_nowait())
    assert change.removed == block_hashes(prompt, 4)[::-1] and change.stored == block_hashes(other, 4)


def test_a_simulated_fleet_with_lora_adapters_or_without_a_readable_profile_is_refused_before_it_starts(tmp_path):
    def inference(**changes) -> InferenceConfig:
        return msgspec.convert({"engine_backend": "simulated", "simulator": {"profile": str(FIXTURE_PROFILE)},
                                **changes}, InferenceConfig)

    check_simulator(inference())
    with pytest.raises(StartRefused, match="serves no LoRA adapters"):
        check_simulator(inference(lora_modules={"sql": "/adapters/sql"}))
    with pytest.raises(StartRefused, match="simulator.profile: cannot read the step-time profile"):
        check_simulator(inference(simulator={"profile": str(tmp_path / "none.json")}))
    with pytest.raises(msgspec.ValidationError, match="time_scale"):
        inference(simulator={"time_scale": 0})


def test_an_engine_vllm_would_refuse_does_not_start_and_says_why(model_dir):
    from engine_worker.__main__ import start_simulated

    inference = msgspec.convert({"engine_backend": "simulated", "simulator": {"profile": str(FIXTURE_PROFILE)},
                                 "engine_args": {"num_gpu_blocks_override": 100}}, InferenceConfig)
    with pytest.raises(SystemExit, match="cannot start: a KV cache of 100 blocks of 16 tokens holds fewer than "
                                         "max_model_len \\(8192\\)"):
        start_simulated(str(model_dir), inference, 0, LoadTracker(False), False, model_dir)


def test_the_engines_shape_comes_from_inference_yml_then_its_profile_then_defaults():
    measured = load_profile(FIXTURE_PROFILE).engine_args
    built = engine_shape({"max_num_seqs": 64}, measured, model_max_len=4096)
    assert (built.max_num_seqs, built.num_gpu_blocks, built.max_model_len, built.block_size) == (64, 50000, 8192, 16)
    assert engine_shape({"num_gpu_blocks_override": 600}, measured, 4096).num_gpu_blocks == 600
    assert engine_shape({}, {}, 4096) == EngineShape(256, 8192, 16, 8192, 4096, True, True, 20)
    with pytest.raises(ValueError, match="holds fewer than max_model_len"):
        engine_shape({"num_gpu_blocks_override": 512}, measured, None)
    with pytest.raises(ValueError, match="without chunked prefill"):
        engine_shape({"enable_chunked_prefill": False, "max_num_batched_tokens": 2048}, measured, None)
    with pytest.raises(ValueError, match="max_num_seqs"):
        engine_shape({"max_num_seqs": 0}, measured, None)


def test_the_vocabulary_is_read_from_the_model_directory(model_dir, tokenizer):
    vocabulary = read_vocabulary(model_dir)
    assert vocabulary.size == tokenizer.vocab_size
    assert tokenizer.decode([vocabulary.eos_token_id], skip_special_tokens=False) == "<|im_end|>"
    assert vocabulary.stop_ids == {vocabulary.eos_token_id, 1} and vocabulary.max_position_embeddings == 8192


def test_the_prefix_cache_is_emptied_only_while_no_request_holds_a_block():
    load = LoadTracker(monitor_gpus=False)
    simulated = engine(stat_loggers=[load.stat_logger_factory(base=object)], report_kv_events=True)
    index = CacheIndex("engine-1", 4)
    prompt = list(range(4, 21))  # four full blocks and a token
    add(simulated, "a", prompt, max_tokens=3, ignore_eos=True)
    simulated.step()
    assert not simulated.reset_prefix_cache()  # a holds its blocks: refused, as vLLM refuses
    run(simulated)
    index.apply(simulated.kv_events.get_nowait())
    assert simulated.reset_prefix_cache()
    assert simulated.kv.usage() == 0.0
    add(simulated, "b", prompt, max_tokens=1, ignore_eos=True)
    assert [output.num_cached_tokens for output in simulated.step()] == [0]  # b found nothing of a's prompt
    assert (load.load.prefix_cache_queries_total, load.load.prefix_cache_hits_total) == (34, 0)
    # The step's events begin with vLLM's AllBlocksCleared, then b's blocks.
    change = index.apply(simulated.kv_events.get_nowait())
    assert change.cleared and change.emptied and change.stored == block_hashes(prompt, 4) and change.removed == []
    add(simulated, "c", prompt, max_tokens=1, ignore_eos=True)
    assert [output.num_cached_tokens for output in simulated.step()] == [16]  # b's four blocks


def test_the_step_loop_empties_the_prefix_cache_when_no_request_runs_and_says_why_not_otherwise():
    simulated, emptied = engine(), []
    loop = StepLoop(simulated, "engine-1", "model", "/tokenizer", FakePublisher(), LoadTracker(False), 0.01,
                    cache_emptied=lambda: emptied.append(True))
    loop.handle(0.0, SimulatedRequests(simulated)(Add("r1", "host-0~aa", [5, 6, 7, 8, 9], {"max_tokens": 2}), 0.0))
    loop.step()
    loop.handle(0.0, ResetPrefixCache("reset-1", "host-0~aa"))
    refusal = loop.publisher.deltas("host-0~aa")[-1]
    assert (refusal.request_id, refusal.finish_reason) == ("reset-1", "error") and "1 running here" in refusal.error
    assert emptied == []
    loop.step()  # r1 ends
    loop.handle(0.0, ResetPrefixCache("reset-2", "host-0~aa"))
    done = loop.publisher.deltas("host-0~aa")[-1]
    assert (done.request_id, done.finish_reason, emptied) == ("reset-2", "stop", [True])


def test_the_step_loop_runs_a_simulated_engine_and_its_failure_ends_every_request():
    simulated = engine()
    loop = StepLoop(simulated, "engine-1", "model", "/tokenizer", FakePublisher(), LoadTracker(False), 0.01)
    for name in ("r1", "r2"):
        loop.handle(0.0, SimulatedRequests(simulated)(Add(name, "host-0~aa", [5, 6, 7], {"max_tokens": 3,
                                                                                         "ignore_eos": True}), 0.0))
    for _ in range(3):
        loop.step()
    deltas = loop.publisher.deltas("host-0~aa")
    assert [(d.request_id, len(d.token_ids), d.finish_reason) for d in deltas] == \
        [("r1", 1, None), ("r2", 1, None)] * 2 + [("r1", 1, "length"), ("r2", 1, "length")]
    loop.handle(0.0, SimulatedRequests(simulated)(Add("r3", "host-0~aa", [5], {"max_tokens": 50}), 0.0))

    def broken():
        raise RuntimeError("simulated fault")

    simulated.scheduler.schedule = broken
    assert loop.serve() == 1
    last = loop.publisher.deltas("host-0~aa")[-1]
    assert (last.request_id, last.finish_reason) == ("r3", "abort") and "simulated fault" in last.error
    assert (None, Goodbye("engine-1", failed=True)) in loop.publisher.sent


def test_under_the_priority_policy_the_waiting_queue_goes_by_priority_then_arrival():
    """One slot: the batch request running first, then the interactive one that came last, then the
    other batch requests in the order they came (vLLM's priority scheduling); first come, first served
    without the policy."""
    for policy, expected in (("priority", ["b0", "i0", "b1", "b2"]), ("fcfs", ["b0", "b1", "b2", "i0"])):
        simulated = engine(max_num_seqs=1, scheduling_policy=policy)
        for request_id, priority in (("b0", 2), ("b1", 2), ("b2", 2), ("i0", 0)):
            admitted = SimulatedRequests(simulated)(Add(request_id, "fe~1", [5, 6, 7], {"max_tokens": 2},
                                                        priority=priority), 0.0)
            simulated.add_request(request_id, admitted.prompt, admitted.params)
            if request_id == "b0":
                simulated.step()  # b0 takes the slot
        order = []
        while simulated.has_unfinished_requests():
            order += [output.request_id for output in simulated.step() if output.finished]
        assert order == expected, policy


def test_under_the_priority_policy_kv_exhaustion_preempts_the_worst_class():
    """Blocks for two requests' prompts but not their growth: the batch request is preempted, whichever
    came first, and the engine's load counts one preemption."""
    load = LoadTracker(monitor_gpus=False)
    simulated = engine(num_gpu_blocks=5, block_size=4, scheduling_policy="priority",
                       stat_loggers=[load.stat_logger_factory(base=object)])
    for request_id, priority in (("batch", 2), ("chat", 0)):
        admitted = SimulatedRequests(simulated)(Add(request_id, "fe~1", list(range(5, 13)),
                                                    {"max_tokens": 8, "ignore_eos": True}, priority=priority), 0.0)
        simulated.add_request(request_id, admitted.prompt, admitted.params)
    while simulated.has_unfinished_requests():
        simulated.step()
        if any(r.num_preemptions for r in simulated.scheduler.requests.values()):
            break
    preempted = {r.request_id for r in simulated.scheduler.requests.values() if r.num_preemptions}
    assert preempted == {"batch"}
    assert load.load.preemptions_total == 1
