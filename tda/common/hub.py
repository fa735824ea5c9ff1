"""Whether the Hugging Face hub can be reached (models and datasets share the check)."""


def hub_resolvable() -> bool:
    """Whether the hub's host name resolves (a fast offline check; sends no request)."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "TRUE", "yes"):
        return True  # let transformers use its local cache
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
