# model-router image: the router (default command) and the example model servers.
#   docker build -t model-router:0.1.0 .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9901:9901 -e ROUTER_ADMIN_TOKEN=... \
#       -v "$PWD/my-router.yaml:/etc/model-router/router.yaml:ro" model-router:0.1.0
# The routing file is read from /etc/model-router/router.yaml, state is kept in the volume
# /var/lib/model-router. docs/deployment.md has the details; tests/test_deploy.py checks this file.

# The build stage compiles the data path with mypyc (setup.py, MODEL_ROUTER_NATIVE=1) into the
# wheel; the final image needs no compiler. Every other dependency ships binary wheels for this base.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
# mypyc type-checks the whole package before compiling: it needs the runtime dependencies and the
# YAML stubs installed (read from pyproject.toml, so the list cannot drift).
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir "mypy>=1.10" "setuptools>=68" wheel "types-PyYAML>=6.0" -r /tmp/requirements.txt
COPY router ./router
COPY backends ./backends
RUN MODEL_ROUTER_NATIVE=1 pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A numeric user, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 router \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin router \
    && mkdir -p /etc/model-router /var/lib/model-router \
    && chown 10001:10001 /var/lib/model-router
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY deploy/router.yaml /etc/model-router/router.yaml
# The Kubernetes reload sidecar (deploy/kubernetes/deployment.yaml) runs this from the same image.
COPY deploy/kubernetes/config-reloader.py /opt/model-router/config-reloader.py

USER 10001:10001
VOLUME ["/var/lib/model-router"]
# Data listener, then the admin listener (health, metrics, reload), as in deploy/router.yaml.
EXPOSE 8080 9901
# Slim images have no curl. An error status (503 while draining) or no answer raises, and the
# exception's exit status 1 marks the container unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/-/healthz', timeout=2)"]
# On SIGTERM (docker stop) the router drains for up to limits.drain_timeout: give `docker stop -t` more.
CMD ["model-router", "serve", "--config", "/etc/model-router/router.yaml"]
