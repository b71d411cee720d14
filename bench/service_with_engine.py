"""`python -m common.service` with another module as the engine program (bench experiments).

    python -m bench.service_with_engine bench.experiments.eager_intake
"""
import sys

from common import service


def main(module: str) -> int:
    render = service.render

    def render_with_engine(server):
        conf = render(server)
        conf.write_text(conf.read_text().replace("-m engine_worker", f"-m {module}"))
        return conf

    service.render = render_with_engine
    return service.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
