"""Attestation on the verifying side: policies, verifiers, and launching trusted services."""
