# ralph in a container: the repository is a volume, tini is PID 1 so signals reach ralph
# and orphans are reaped, and ralph runs as a non-root user.
#   docker build -t ralph --build-arg AGENT_CLIS="@anthropic-ai/claude-code" .
#   docker build -t ralph --build-arg EXTRAS="queue" .     # many machines (docs/distributed.md)
#   docker run -d --name ralph --env-file ralph.env -v /srv/myrepo:/repo ralph
# sandbox = "bwrap" inside a container needs user namespaces the runtime allows (see
# docs/sandbox.md); bubblewrap itself is installed.
FROM python:3.12-slim

ARG AGENT_CLIS=""
ARG EXTRAS=""

RUN apt-get update \
    && apt-get install -y --no-install-recommends git tini ca-certificates bubblewrap \
    && if [ -n "$AGENT_CLIS" ]; then \
         apt-get install -y --no-install-recommends nodejs npm \
         && npm install --global --no-audit --no-fund $AGENT_CLIS; \
       fi \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /src/
COPY ralph /src/ralph
RUN pip install --no-cache-dir "/src${EXTRAS:+[$EXTRAS]}" && rm -rf /src

RUN useradd --create-home --uid 1000 ralph \
    && git config --system --add safe.directory /repo
USER ralph
ENV HOME=/home/ralph
WORKDIR /repo
VOLUME ["/repo"]

HEALTHCHECK --interval=60s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "ralph.runtime.service", "health", "/repo"]

ENTRYPOINT ["/usr/bin/tini", "--", "ralph", "-C", "/repo"]
CMD ["run"]
