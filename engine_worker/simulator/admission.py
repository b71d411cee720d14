"""Admission for the simulated engine, on the request reader's thread as for vLLM
(engine_worker/admission.py): what vLLM's input processor and SamplingParams would refuse, and what
the simulation does not model, is refused with the reason; the rest becomes the Prompt (token ids and
block hashes, hashed here rather than on the step thread) and the request's Sampling."""
import msgspec

from common.messages import Add
from engine_worker.simulator.sampling import Sampling
from engine_worker.simulator.scheduler import Prompt, extend_block_hashes
from engine_worker.step_loop import Admitted


class SimulatedRequests:
    def __init__(self, engine):
        self.shape = engine.shape
        self.vocabulary = engine.vocabulary

    def __call__(self, message: Add, received_at: float, trace_headers: dict | None = None) -> Admitted:
        if message.lora is not None:
            raise ValueError(f"the simulated engine serves no LoRA adapters (asked for {message.lora!r})")
        try:
            sampling = msgspec.convert(message.sampling, Sampling)
        except msgspec.ValidationError as error:
            raise ValueError(f"sampling parameters: {error}") from None
        self.check_sampling(sampling)
        self.check_prompt(message.prompt_token_ids, sampling.max_tokens)
        if not sampling.ignore_eos:  # as vLLM adds the generation config's other EOS ids to stop_token_ids
            sampling.stop_token_ids |= self.vocabulary.stop_ids - {self.vocabulary.eos_token_id}
        prompt = list(message.prompt_token_ids)  # the request's own: its generated tokens are appended to it
        hashes = extend_block_hashes([], prompt, self.shape.block_size)
        return Admitted(message, Prompt(prompt, hashes, message.priority), sampling)

    def check_sampling(self, sampling: Sampling) -> None:
        if sampling.structured_outputs is not None:
            raise ValueError("the simulated engine does not model structured outputs (response_format, tools "
                             "with tool_choice required or a named function, structured_outputs)")
        if sampling.prompt_logprobs is not None:
            raise ValueError("the simulated engine does not model prompt logprobs")
        if sampling.n != 1:
            raise ValueError(f"n must be 1 for the simulated engine, not {sampling.n} (frontends send each choice "
                             "as a request of its own)")
        if sampling.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {sampling.max_tokens}.")
        if not 0 <= sampling.min_tokens <= sampling.max_tokens:
            raise ValueError(f"min_tokens must be between 0 and max_tokens={sampling.max_tokens}, "
                             f"got {sampling.min_tokens}.")
        if sampling.logprobs is not None and not 0 <= sampling.logprobs <= self.shape.max_logprobs:
            raise ValueError(f"Requested sample logprobs of {sampling.logprobs}, which is outside 0 .. "
                             f"{self.shape.max_logprobs} (max_logprobs)")
        if sampling.allowed_token_ids is not None:
            if not sampling.allowed_token_ids:
                raise ValueError("allowed_token_ids is not None and empty!")
            self.check_vocabulary(sampling.allowed_token_ids, "allowed_token_ids")

    def check_prompt(self, prompt: list[int], max_tokens: int) -> None:
        if not prompt:
            raise ValueError("The decoder prompt cannot be empty")
        self.check_vocabulary(prompt, "the prompt")
        if len(prompt) + max_tokens > self.shape.max_model_len:
            raise ValueError(f"the prompt ({len(prompt)} tokens) and max_tokens ({max_tokens}) are more than the "
                             f"maximum model length of {self.shape.max_model_len}")

    def check_vocabulary(self, token_ids: list[int], what: str) -> None:
        bad = next((token for token in token_ids if not 0 <= token < self.vocabulary.size), None)
        if bad is not None:
            raise ValueError(f"Token id {bad} in {what} is out of vocabulary (0 to {self.vocabulary.size - 1})")
