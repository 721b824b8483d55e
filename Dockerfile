# Dockerfile — lockstep images (Debian bookworm, multi-stage).
#
#   docker build -t lockstep .                      the runtime image (default, last stage)
#   docker build --target chaos -t lockstep-chaos .  the chaos test runner (docker-compose.yml)
#
# Stages:
#   toolchain      every package of .ci/packages, exactly as CI installs them (one list, one home)
#   build-runtime  lockstep for production: no tests, no benchmarks, no fault points
#   build-chaos    lockstep with fault points (LOCKSTEP_FAULTPOINT), which the chaos runner
#                  needs to kill it at named points; still no Criterion tests: the chaos
#                  service runs tests/chaos/chaos.py, not ctest, and the unit/mock tiers are
#                  CI's job (.ci/run). A separate stage (rather than one image for both) keeps
#                  crash hooks out of the production binary, and BuildKit builds only the
#                  stages the requested target needs.
#   base-runtime   bookworm-slim + the runtime libraries + the unprivileged user
#   chaos          base-runtime + python3-confluent-kafka + chaos.py + the fault-point binary
#   runtime        base-runtime + lockstep; non-root; ENTRYPOINT ["lockstep"]
#
# RUNTIME_PACKAGES are the packages of the libraries the lockstep binary links
# (librdkafka-dev -> librdkafka1, ...); CHAOS_PACKAGES are the Python packages of
# .ci/packages. .ci/check-docker (run by .ci/run) fails when either drifts from .ci/packages
# or from what build/lockstep actually links.
ARG DEBIAN_IMAGE=debian:bookworm-slim
ARG RUNTIME_PACKAGES="librdkafka1 liblmdb0 libmsgpackc2 libjansson4 libmicrohttpd12"
ARG CHAOS_PACKAGES="python3 python3-confluent-kafka python3-prometheus-client"

FROM ${DEBIAN_IMAGE} AS toolchain
ARG DEBIAN_FRONTEND=noninteractive
COPY .ci/packages /tmp/ci-packages
# the same list and the same rules as lockstep.sh: '#' lines are comments, blanks ignored
RUN apt-get update \
 && grep -v '^#' /tmp/ci-packages | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .

FROM toolchain AS build-runtime
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLK_WERROR=ON \
      -DLK_BUILD_TESTS=OFF -DLK_BUILD_BENCH=OFF -DLK_FAULTPOINTS=OFF \
 && cmake --build /build \
 && DESTDIR=/out cmake --install /build \
 && /out/usr/local/bin/lockstep --version

FROM toolchain AS build-chaos
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLK_WERROR=ON \
      -DLK_BUILD_TESTS=OFF -DLK_BUILD_BENCH=OFF -DLK_FAULTPOINTS=ON \
 && cmake --build /build \
 && DESTDIR=/out cmake --install /build \
 && /out/usr/local/bin/lockstep --version

FROM ${DEBIAN_IMAGE} AS base-runtime
ARG DEBIAN_FRONTEND=noninteractive
ARG RUNTIME_PACKAGES
# ca-certificates: librdkafka verifies brokers against the system CA store
# (kafka.security.protocol=SSL / SASL_SSL).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates ${RUNTIME_PACKAGES} \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --uid 10001 --home-dir /var/lib/lockstep \
      --no-create-home --shell /usr/sbin/nologin lockstep \
 && install -d -o lockstep -g lockstep -m 0750 /var/lib/lockstep \
 && install -d -m 0755 /etc/lockstep

FROM base-runtime AS chaos
ARG DEBIAN_FRONTEND=noninteractive
ARG CHAOS_PACKAGES
RUN apt-get update \
 && apt-get install -y --no-install-recommends ${CHAOS_PACKAGES} \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build-chaos /out/usr/local/bin/lockstep /usr/local/bin/lockstep
COPY tests/chaos/chaos.py /opt/lockstep/tests/chaos/chaos.py
USER lockstep
WORKDIR /tmp
# The same entry point as on a workstation; docker-compose.yml spells out the full command.
CMD ["python3", "/opt/lockstep/tests/chaos/chaos.py", "--lockstep", "/usr/local/bin/lockstep", \
     "--bootstrap", "kafka:9092"]

FROM base-runtime AS runtime
COPY --from=build-runtime /out/usr/local/bin/lockstep /usr/local/bin/lockstep
# The checkpoint (LMDB) lives here: mount a volume, one directory per app.id
# (checkpoint.dir=/var/lib/lockstep/<app>). A new named volume takes this directory's
# ownership (lockstep:lockstep) from the image.
VOLUME ["/var/lib/lockstep"]
USER lockstep
WORKDIR /var/lib/lockstep
# lockstep is PID 1 and handles SIGTERM itself (graceful stop: finish and commit the batch
# in flight, drain the outbox); give `docker stop -t` more than 2 x shutdown.timeout.ms.
STOPSIGNAL SIGTERM
ENTRYPOINT ["lockstep"]
CMD ["run", "-c", "/etc/lockstep/lockstep.properties"]
