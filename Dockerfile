# pgvault as an Elastic Premium custom container: the same binary and function folders as the
# Flex package, with PostgreSQL client tools from PGDG. Choose it for databases whose dumps outlast
# Flex Consumption's grace periods (60 min at scale-in, 10 min at platform updates): Elastic
# Premium keeps an always-ready instance and does not recycle running executions that way.
# Deploy with `hosting: 'premium-container'` in infra/main.bicep; see docs/deploy.md.
#
#   docker build -t <registry>/pgvault:<version> --build-arg PG_MAJORS="17 16" .

ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin pgvault

# The Functions host image for custom handlers (what `func init --worker-runtime custom --docker`
# uses); Debian-based, so PGDG packages install.
FROM mcr.microsoft.com/azure-functions/dotnet:4-appservice
ARG PG_MAJORS="17 16 15 14"
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common ca-certificates \
    && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        $(for m in $PG_MAJORS; do echo postgresql-client-$m; done) \
    && rm -rf /var/lib/apt/lists/*

ENV AzureWebJobsScriptRoot=/home/site/wwwroot \
    AzureFunctionsJobHost__Logging__Console__IsEnabled=true
COPY host.json /home/site/wwwroot/host.json
COPY functions/ /home/site/wwwroot/functions/
COPY --from=build /src/target/release/pgvault /home/site/wwwroot/pgvault
RUN chmod 0755 /home/site/wwwroot/pgvault
