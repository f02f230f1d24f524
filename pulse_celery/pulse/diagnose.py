"""Say what a connection or declaration error means for a Pulse user, with the fix; never the password."""

from __future__ import annotations

from .config import PulseConfig


def describe_error(exc: BaseException, config: PulseConfig, host: int = 0) -> str:
    """Say what a connection or declaration error means for a Pulse user, with the fix.

    ``host`` is the index of the host (of a failover ``pulse_url``) the error came from.
    """
    text = str(exc) or repr(exc)
    code = getattr(exc, "reply_code", None) or getattr(exc, "code", None)
    if config.password and config.password in text:
        text = text.replace(config.password, "****")
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            f"{text} -- the server's certificate is not trusted for {config.host_name(host)!r}: check "
            "the host name in pulse_url, and pulse_ssl_ca_certs if the server uses a private CA"
        )
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return f"{text} -- amqps:// reached a port without TLS; Pulse's TLS port is 5671"
    if (code == 403 or "ACCESS_REFUSED" in text) and config.credentials is not None:
        return (
            f"{text} -- check what pulse_credentials returns (it is asked again on the next "
            f"attempt), and that queues are named queue/{config.user}/... and foreign exchanges exist"
        )
    if code == 403 or "ACCESS_REFUSED" in text:
        return (
            f"{text} -- check pulse_user/pulse_password, and that queues are named "
            f"queue/{config.user}/... and foreign exchanges exist"
        )
    if code == 404 or "NOT_FOUND" in text:
        return f"{text} -- an exchange named in a binding does not exist on this Pulse vhost"
    if code == 406 or "PRECONDITION_FAILED" in text:
        return (
            f"{text} -- the queue exists with other arguments (queue type, x-max-length or "
            "x-expires); set pulse_queue_type / pulse_queue_max_length / pulse_queues to match it, "
            "or delete the queue (pulse-celery delete, or the pulse_delete remote-control command)"
        )
    return text
