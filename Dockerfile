# dmp-contained: the whole Digital Marketplace development stack in one container, with the
# dmp-contained supervisor as PID 1.
#
# Offline / prebuilt binary (what scripts/build-image.sh does; works with no registry access):
#     cargo build --release
#     scripts/build-base-image.sh            # only if debian:bookworm-slim cannot be pulled
#     docker build --build-arg BASE=dmp-contained-base:bookworm -t dmp-contained .
#   The builder stage then runs on the base image itself and just picks up
#   target/release/dmp-contained from the build context (built on a bookworm-compatible host).
#
# Online, compiling inside Docker instead (no host toolchain needed):
#     docker build --build-arg BUILDER=rust:1-bookworm -t dmp-contained .
#
# Without Elasticsearch (no access to artifacts.elastic.co, or a smaller image):
#     docker build --build-arg WITH_ELASTICSEARCH=0 ...
#
# Run:
#     docker run -p 80:80 -v "$PWD/resources-for-container/mount:/dmp-contained/mount" \
#         -v dmp-cache:/var/cache/dmp-contained -v dmp-pg:/var/lib/postgresql dmp-contained
#   dmp-cache: venvs, step records, data snapshots; dmp-pg: the live databases (PGDATA one level
#   below).  Without dmp-pg a new container gets the databases restored from dmp-cache's snapshot.

ARG BASE=debian:bookworm-slim
ARG BUILDER=${BASE}

# ---------------------------------------------------------------------------------------------
# Binary: compiled here when the builder image has cargo, else the prebuilt one from the context.
FROM ${BUILDER} AS builder
WORKDIR /src
COPY . .
RUN set -eu; \
    if command -v cargo >/dev/null 2>&1; then \
        cargo build --release --locked; \
    elif [ ! -x target/release/dmp-contained ]; then \
        echo "no cargo in the builder image and no target/release/dmp-contained in the build context:" >&2; \
        echo "run 'cargo build --release' first, or pass --build-arg BUILDER=rust:1-bookworm" >&2; \
        exit 1; \
    fi; \
    install -D -m 0755 target/release/dmp-contained /out/dmp-contained; \
    mkdir -p /out/tools; \
    if [ -d target/tools ]; then cp -a target/tools/. /out/tools/; fi

# ---------------------------------------------------------------------------------------------
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
ARG WITH_ELASTICSEARCH=1
ARG ELASTICSEARCH_SERIES=7.x

ENV LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    DMP_ROOT=/dmp-contained \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_CACHE_DIR=/var/cache/dmp-contained/uv \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    PYTHONDONTWRITEBYTECODE=1

# The stack's packages, in one layer that changes only when this list does.  No service may start
# at install time (there is no init; the supervisor starts them), and the Debian postgresql
# package must not create its default 15/main cluster (pg-init makes ours in $PGDATA).
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d; \
    mkdir -p /etc/postgresql-common/createcluster.d; \
    echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/dmp-contained.conf; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        ca-certificates curl procps tzdata git \
        nginx-light \
        redis-server \
        postgresql-15 postgresql-client-15 \
        python3 python3-flask python3-psycopg2 python3-redis python3-venv python3-pip python3-dev \
        gcc libc6-dev make libpq-dev libffi-dev libxml2-dev libxslt1-dev libssl-dev \
        nodejs npm; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    rm -f /etc/nginx/sites-enabled/default

# Tools staged by scripts/build-image.sh in target/tools/ (both optional):
# - uv: make-venv installs the apps' requirements with it (pip without it; far slower cold);
# - ca-certificates.crt: the building host's CA bundle, trusted in the image, for networks whose
#   TLS goes through their own CA (PyPI fetches fail with "invalid peer certificate" otherwise).
COPY --from=builder /out/tools/ /tmp/dmp-contained-tools/
RUN set -eu; \
    t=/tmp/dmp-contained-tools; \
    if [ -x "$t/uv" ]; then install -m 0755 "$t/uv" /usr/local/bin/uv; uv --version; \
    else echo "no uv staged: make-venv will use pip"; fi; \
    if [ -s "$t/ca-certificates.crt" ]; then \
        cp "$t/ca-certificates.crt" /usr/local/share/ca-certificates/dmp-contained-host-bundle.crt; \
        update-ca-certificates >/dev/null; \
    fi; \
    rm -rf "$t"

# Elasticsearch 7 from Elastic's apt repository; skipped with WITH_ELASTICSEARCH=0.  Without it the
# supervisor skips the elasticsearch entry (when_exists) and the index steps fail softly (optional).
RUN set -eux; \
    if [ "$WITH_ELASTICSEARCH" = 1 ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends gpg; \
        curl -fsSL https://artifacts.elastic.co/GPG-KEY-elasticsearch \
            | gpg --dearmor -o /usr/share/keyrings/elasticsearch-keyring.gpg; \
        echo "deb [signed-by=/usr/share/keyrings/elasticsearch-keyring.gpg] https://artifacts.elastic.co/packages/${ELASTICSEARCH_SERIES}/apt stable main" \
            >/etc/apt/sources.list.d/elastic.list; \
        apt-get update; \
        apt-get install -y --no-install-recommends elasticsearch; \
        apt-get purge -y --auto-remove gpg; \
        rm -rf /var/lib/apt/lists/*; \
    else \
        echo "WITH_ELASTICSEARCH=$WITH_ELASTICSEARCH: Elasticsearch not installed"; \
    fi

# Directories the services write to, owned by the users they run as.  Without Elasticsearch its
# user is still created: supervisor.toml names it, and an unknown user is a config error even for
# an entry that will be skipped.
RUN set -eux; \
    install -d -o postgres -g postgres -m 2775 /run/postgresql; \
    install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data; \
    install -d -o redis -g redis -m 0750 /var/lib/redis; \
    install -d /run/dmp-contained /var/cache/dmp-contained /dmp-contained/mount/apps-github-repos; \
    if [ -d /etc/elasticsearch ]; then \
        install -d -o elasticsearch -g elasticsearch /var/lib/elasticsearch /var/log/elasticsearch; \
    else \
        useradd --system --user-group --no-create-home --home-dir /usr/share/elasticsearch \
            --shell /usr/sbin/nologin elasticsearch; \
    fi

# An initialised cluster in the image: pg-init then finds PG_VERSION and skips initdb (1.5-3 s
# off every new container's critical path). Same flags as pg-init in supervisor.toml.
RUN su postgres -s /bin/sh -c 'initdb -D /var/lib/postgresql/data -U postgres --auth=trust \
        --encoding=UTF8 --locale=C.UTF-8 --no-instructions' >/dev/null

COPY resources-for-container/ /dmp-contained/resources-for-container/
COPY supervisor.toml /dmp-contained/supervisor.toml
RUN set -eux; \
    if [ -d /etc/elasticsearch ]; then \
        cp /dmp-contained/resources-for-container/elasticsearch.yml /etc/elasticsearch/elasticsearch.yml; \
    fi

# Last: the binary changes most often.
COPY --from=builder /out/dmp-contained /usr/local/bin/dmp-contained

WORKDIR /dmp-contained
# Two volumes: the cache (venvs, step records, data snapshots) and Postgres' own.  PGDATA sits one
# level BELOW its volume's mount point (/var/lib/postgresql/data): a snapshot restore swaps the data
# dir by rename, which a mount point cannot be.  Whether PGDATA holds the seeded databases is read
# from the marker inside PGDATA itself (docs/CACHE.md), so a new container with only the cache
# volume restores the snapshot, and one with both volumes keeps its data as is.
VOLUME /var/cache/dmp-contained /var/lib/postgresql
EXPOSE 80 55000 55009
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=3s --start-period=120s --retries=3 CMD ["dmp-contained", "health"]
ENTRYPOINT ["/usr/local/bin/dmp-contained"]
CMD ["up", "--config", "/dmp-contained/supervisor.toml"]
