"""Entry point of the engine worker process: `python -m engine_worker`."""
import logging
import os
import signal
import uuid

from common import default_model
from common.config import InferenceConfig, ServerConfig, load_inference, load_server
from common.logs import setup_logging
from common.messages import Goodbye

log = logging.getLogger("engine_worker")


def model_path(server: ServerConfig, inference: InferenceConfig) -> str:
    return inference.model or str(default_model.ensure(server.path(server.data_dir)))


def build_engine(model: str, inference: InferenceConfig, stat_logger):
    log.info("loading vLLM")
    from vllm import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    args = EngineArgs(model=model, **inference.engine_args)
    log.info("starting the engine on %s", model)
    return LLMEngine.from_engine_args(args, stat_loggers=[stat_logger])


def run_engine_worker_process() -> None:
    server, inference = load_server(), load_inference()
    setup_logging(server.log_level)
    if inference.cuda_visible_devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = inference.cuda_visible_devices
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(inference.cpu_kv_cache_gib))
    server.path(server.run_dir).mkdir(parents=True, exist_ok=True)

    import zmq

    from engine_worker.io_threads import OutputPublisher, start_request_reader
    from engine_worker.load import LoadTracker
    from engine_worker.step_loop import StepLoop

    model = model_path(server, inference)
    load = LoadTracker()
    engine = build_engine(model, inference, load.stat_logger_factory())
    engine_id = uuid.uuid4().hex[:12]
    context = zmq.Context()
    publisher = OutputPublisher(context, server.output_address, server.engine, engine_id, load)
    loop = StepLoop(
        engine, engine_id, inference.model or default_model.NAME, model, publisher, load,
        server.engine.heartbeat_interval_s,
    )
    start_request_reader(context, server.request_address, server.engine, loop.inbox)

    def stop(signum, frame):
        log.info("signal %d: finishing", signum)
        loop.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("engine %s ready: requests on %s, outputs on %s", engine_id, server.request_address, server.output_address)
    loop.run()
    publisher.send(None, Goodbye(engine_id))
    publisher.close()
    log.info("engine %s stopped", engine_id)


if __name__ == "__main__":
    run_engine_worker_process()
