"""Generated gRPC and protobuf modules of the Stormlock API v1 (package
``stormlock.v1``). Regenerate with ``scripts/gen-clients``; do not edit."""
