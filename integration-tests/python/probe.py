"""Connects to a fedsec coordinator as standard tools do: Python's ssl (OpenSSL) loads the
development PKI's keys, and grpcio calls health and lists the services by reflection over
mutual TLS. Prints one JSON object; exits non-zero on any failure.

usage: probe.py PKI_DIR HOST:PORT
"""

import json
import ssl
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def main() -> None:
    pki, address = sys.argv[1], sys.argv[2]

    def read(name: str) -> bytes:
        with open(f"{pki}/{name}", "rb") as f:
            return f.read()

    # OpenSSL, through Python's ssl, reads every key and certificate pair pki init wrote.
    for cert, key in [("server.pem", "server.key"), ("client-001.pem", "client-001.key")]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(f"{pki}/ca.pem")
        context.load_cert_chain(f"{pki}/{cert}", f"{pki}/{key}")

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("ca.pem"),
        private_key=read("client-001.key"),
        certificate_chain=read("client-001.pem"),
    )
    with grpc.secure_channel(address, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        services = []
        for response in reflection.ServerReflectionInfo(iter([request]), timeout=10):
            services += [s.name for s in response.list_services_response.service]
        # Reflection v1 (what grpcurl speaks) has the same messages under another service
        # name; grpcio ships only the v1alpha stubs, so it is called by its method path.
        v1 = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        services_v1 = []
        for response in v1(iter([request]), timeout=10):
            services_v1 += [s.name for s in response.list_services_response.service]
    print(
        json.dumps(
            {
                "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
                "services": sorted(services),
                "services_v1": sorted(services_v1),
                "openssl": ssl.OPENSSL_VERSION,
                "grpcio": grpc.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
