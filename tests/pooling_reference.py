"""vLLM's own answers for the pooling end-to-end tests: `LLM.embed` on the embedding model and
`LLM.score` on the cross-encoder, for the inputs given, in one process that starts each model once.

`python -m tests.pooling_reference EMBEDDING_MODEL CROSS_ENCODER ANSWER` reads {"embed": [texts], "query": text,
"documents": [texts]} on stdin and writes {"embed": [vectors], "score": [scores], "seconds": [per start]} to
the file ANSWER (vLLM logs on stdout)."""
import json
import os
import sys
import time

ENGINE_ARGS = {"max_model_len": 512, "enforce_eager": True}


def main() -> None:
    from vllm import LLM

    asked = json.load(sys.stdin)
    answer = {"seconds": []}
    for model, compute in ((sys.argv[1], embed), (sys.argv[2], score)):
        began = time.monotonic()
        llm = LLM(model=model, **ENGINE_ARGS)
        answer["seconds"].append(time.monotonic() - began)
        answer.update(compute(llm, asked))
        with open(sys.argv[3], "w") as file:  # before the teardown, which vLLM's C++ threads may abort
            json.dump(answer, file)
        llm.llm_engine.engine_core.shutdown()
        del llm
    # the interpreter's own teardown may abort in vLLM's C++ threads ("terminate called without an
    # active exception"): the answer is written and the engines are shut down, so end here
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def embed(llm, asked: dict) -> dict:
    return {"embed": [output.outputs.embedding for output in llm.embed(asked["embed"], use_tqdm=False)]}


def score(llm, asked: dict) -> dict:
    outputs = llm.score(asked["query"], asked["documents"], use_tqdm=False)
    return {"score": [output.outputs.score for output in outputs]}


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    main()
