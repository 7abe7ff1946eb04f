"""The key broker service (KBS) that the data owner runs: attestation-gated release of dataset keys.

``server`` (the HTTP service and its bounds), ``audit`` (the append-only log), ``policy`` (the owner's versioned
release policy), ``verifiers`` (evidence verification per attestation backend) and ``authoring`` (writing a
policy for one's datasets).
"""
