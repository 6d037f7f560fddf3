"""ToneGuard's client for the tokenising gateway: HTTPS with mutual TLS, typed failures.

Card data crosses the process boundary only here, inside a TLS connection authenticated both
ways by the deployment CA. Errors never carry the request body.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx


class GatewayError(Exception):
    """Base of gateway failures the agent is told about."""


class GatewayUnavailableError(GatewayError):
    """Cannot connect (down, refused, DNS)."""


class GatewayTimeoutError(GatewayError):
    """Connected but no answer in time."""


class GatewayTlsError(GatewayError):
    """TLS failed: wrong CA, bad or missing client certificate."""


class GatewayDeclinedError(GatewayError):
    def __init__(self, code: str) -> None:
        super().__init__(f"declined: {code}")
        self.code = code


@dataclass(frozen=True)
class TokenResult:
    token: str
    brand: str
    last4: str
    expiry: str


class GatewayClient:
    def __init__(self, url: str, *, ca_file: Path, cert_file: Path, key_file: Path,
                 timeout: float = 5.0) -> None:
        context = ssl.create_default_context(cafile=str(ca_file))
        context.load_cert_chain(str(cert_file), str(key_file))  # bad files fail at start
        self._url, self._context, self._timeout = url, context, timeout
        self._http: httpx.AsyncClient | None = None

    @property
    def _client(self) -> httpx.AsyncClient:
        """Made at the first request. Why: httpx is ~0.1 s of imports, and a node restarting
        after a crash imports only what its live calls need before they relay again."""
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(base_url=self._url, verify=self._context,
                                           timeout=self._timeout)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def tokenise(self, fields: dict[str, str], idempotency_key: str) -> TokenResult:
        body = {"pan": fields["payment-card-number"], "expiry": fields["expiration-date"],
                "security_code": fields["security-code"]}
        if fields.get("postal-code"):
            body["postal_code"] = fields["postal-code"]
        import httpx  # loaded by _client by now; here for the exception types

        try:
            response = await self._client.post("/v1/tokens", json=body,
                                               headers={"Idempotency-Key": idempotency_key})
        except httpx.TimeoutException as exc:
            raise GatewayTimeoutError("gateway did not answer in time") from exc
        except httpx.ConnectError as exc:
            if isinstance(exc.__context__, ssl.SSLError) or "SSL" in str(exc):
                raise GatewayTlsError("TLS handshake with the gateway failed") from exc
            raise GatewayUnavailableError("gateway unreachable") from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            # A server that drops us during the handshake (no client certificate) lands here.
            raise GatewayTlsError("gateway closed the connection (mutual TLS refused?)") from exc
        finally:
            body.clear()
        try:
            data = response.json() if response.headers.get("content-type", "").startswith(
                "application/json") else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if response.status_code == 201 and data.get("status") == "approved":
            return TokenResult(data["token"], data["brand"], data["last4"], data["expiry"])
        if response.status_code == 402:
            raise GatewayDeclinedError(str(data.get("decline_code", "declined")))
        # 409 idempotency_key_reused, 413 body_too_large, 422 invalid_request: the gateway's
        # error codes are fixed words, never the request's values.
        error = data.get("error")
        code = error if isinstance(error, str) else ""
        suffix = f" ({code})" if code.replace("_", "").isalpha() and len(code) <= 40 else ""
        raise GatewayError(f"gateway answered HTTP {response.status_code}{suffix}")
