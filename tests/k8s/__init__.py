"""Checks of the Kubernetes manifests in k8s/ and the Dockerfile (`make k8s-check`)."""
