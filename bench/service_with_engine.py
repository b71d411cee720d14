"""`python -m common.service` with another module as the engine program, and optionally as the
frontend program too, started with `--frontend` (bench experiments).

    python -m bench.service_with_engine bench.experiments.eager_intake
    python -m bench.service_with_engine bench.experiments.request_trace bench.experiments.request_trace
"""
import sys

from common import service


def main(module: str, frontend_module: str | None = None) -> int:
    render = service.render

    def render_with_engine(server):
        conf = render(server)
        text = conf.read_text().replace("-m engine_worker", f"-m {module}")
        if frontend_module:
            text = text.replace("-m frontend ", f"-m {frontend_module} --frontend ")
        conf.write_text(text)
        return conf

    service.render = render_with_engine
    sys.argv[1:] = []  # the service's own arguments: none, it serves
    return service.main()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
