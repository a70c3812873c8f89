# floodgate container image.
#
#   docker build -t floodgate .
#   docker run --rm -p 8080:8080 -p 9090:9090 -v floodgate-state:/var/lib/floodgate floodgate \
#       --config /etc/floodgate/floodgate.toml --listen 0.0.0.0:8080 --admin 0.0.0.0:9090 \
#       --state /var/lib/floodgate/state.bin --upstream http://api.internal:9000
#
# The shipped config/floodgate.toml listens on 127.0.0.1 (proxy :8080, admin :9090), which is
# unreachable from outside a container, so the default CMD below overrides both addresses to
# 0.0.0.0. Its upstream, http://127.0.0.1:9000, would be this container itself: pass --upstream
# (arguments given to `docker run` replace the whole CMD, so repeat --config/--listen/--admin/
# --state) or mount your own config over /etc/floodgate/floodgate.toml. SIGHUP reloads the config
# file. Daily counters and penalties are kept across restarts in /var/lib/floodgate (a volume).

# ---- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies downloaded first, against stub sources, so this layer is reused until Cargo.toml or
# Cargo.lock change. The [[bench]] targets the manifest declares get stubs too, so no cargo
# version objects to a declared target without a file.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for b in $(sed -n '/^\[\[bench\]\]/,/^$/s/^name *= *"\(.*\)"/\1/p' Cargo.toml); do \
        echo 'fn main() {}' > "benches/$b.rs"; \
    done \
 && cargo fetch --locked \
 && rm -rf src benches

COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY config ./config
COPY scripts ./scripts
# The profile-guided build (scripts/pgo-build.sh): instrumented build, the training workload on
# loopback inside this stage, then the optimised build — what docs/performance.md's figures
# measure. Without rustup's llvm-tools (no network) it falls back to a plain release build.
RUN scripts/pgo-build.sh \
 && install -D -m 0755 target/pgo/floodgate /out/floodgate

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN groupadd --system --gid 10001 floodgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin floodgate

COPY --from=build /out/floodgate /usr/local/bin/floodgate
COPY config/ /etc/floodgate/
# The state file's directory: written at start, every few seconds and on shutdown.
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/floodgate
VOLUME /var/lib/floodgate

# floodgate asks for transparent huge pages for its counter tables itself (src/allocator.rs);
# they apply when the host's THP mode is "madvise" or "always".

USER 10001:10001
# 8080: the proxy; 9090: admin (/healthz, /readyz, /metrics, /usage).
EXPOSE 8080 9090
ENTRYPOINT ["floodgate"]
CMD ["--config", "/etc/floodgate/floodgate.toml", "--listen", "0.0.0.0:8080", "--admin", "0.0.0.0:9090", \
     "--state", "/var/lib/floodgate/state.bin"]
