"""What a web registration claims on the shared web ports: its names, checked against the
server's policy, the options of its routes, and the URLs it is reached at.

A registration claims `SUBDOMAIN.DOMAIN` (the subdomain defaults to its public name: the
service's, or its group's) and the custom domains the server's policy lets that name claim
(`server.http.custom_domains`, and `server.services[].custom_domains` of the name).
"""

from __future__ import annotations

from muxtunnel import control
from muxtunnel.control import Register
from muxtunnel.fields import MAX_LIST_ITEMS
from muxtunnel.model import ServerConfig
from muxtunnel.server._registry import RegistrationError
from muxtunnel.specs import SpecError, validate_subdomain
from muxtunnel.vhost import BasicAuth, InvalidHostError, RouteOptions, normalise_domain

__all__ = ["claimed_hosts", "domain_allowed", "hosts_allowed", "route_options", "service_urls"]


def domain_allowed(name: str, patterns: tuple[str, ...]) -> bool:
    """Does a policy pattern (`*`, `*.example.org`, an exact name) cover `name`?"""
    for pattern in patterns:
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def _allowed(config: ServerConfig, name: str) -> tuple[str, ...]:
    assert config.http is not None
    policy = next((p for p in config.services if p.name == name), None)
    return config.http.custom_domains + (policy.custom_domains if policy else ())


def claimed_hosts(config: ServerConfig, request: Register, name: str) -> list[str]:
    """The names a registration under public name `name` claims, checked against the policy."""
    assert config.http is not None
    domain = config.http.domain
    try:
        label = validate_subdomain(request.subdomain or name)
    except SpecError as exc:
        raise RegistrationError(control.BAD_REQUEST, str(exc)) from None
    hosts = [f"{label}.{domain}"]
    allowed = _allowed(config, name)
    for text in request.custom_domains:
        try:
            host = normalise_domain(text)
        except InvalidHostError as exc:
            raise RegistrationError(control.BAD_REQUEST, str(exc)) from None
        bare = host.removeprefix("*.")
        if bare == domain or bare.endswith("." + domain):
            raise RegistrationError(
                control.DOMAIN_NOT_ALLOWED,
                f"{host} is under the server's domain {domain}: use subdomain instead",
            )
        if not domain_allowed(host, allowed):
            raise RegistrationError(
                control.DOMAIN_NOT_ALLOWED,
                f"the server does not let service {name!r} claim {host} "
                "(server.http.custom_domains, or the service's custom_domains policy)",
            )
        hosts.append(host)
    return list(dict.fromkeys(hosts))


def hosts_allowed(config: ServerConfig, hosts: list[str], name: str) -> bool:
    """Does the policy of a (reloaded) config still let `name` hold `hosts`?"""
    assert config.http is not None
    allowed, domain = _allowed(config, name), config.http.domain
    return all(domain_allowed(host, allowed) for host in hosts if not host.endswith("." + domain))


def route_options(request: Register, per_request: bool) -> RouteOptions:
    """The options of a registration's routes (`RegistrationError` if they are invalid)."""
    auth = None
    try:
        if request.basic_auth is not None:
            auth = BasicAuth(*request.basic_auth)
        protocol = request.proxy_protocol
        return RouteOptions(
            host_rewrite=request.host_rewrite,
            set_headers=request.set_headers,
            remove_headers=request.remove_headers,
            basic_auth=auth,
            response_timeout_s=request.response_timeout_s,
            proxy_protocol="v1" if protocol == "v1" else "v2" if protocol == "v2" else None,
            per_request=per_request,
        )
    except ValueError as exc:
        raise RegistrationError(control.BAD_REQUEST, str(exc)) from None


def service_urls(
    type: str,
    hosts: list[str],
    locations: tuple[str, ...],
    ports: tuple[int | None, int | None],
    terminates_tls: bool,
) -> tuple[str, ...]:
    """Where visitors reach a web service, given the (http, https) ports bound."""
    http_port, https_port = ports
    schemes = []
    if type == "http" and http_port is not None:
        schemes.append(("http", http_port, 80))
    if (type == "https" or terminates_tls) and https_port is not None:
        schemes.append(("https", https_port, 443))
    urls = [
        f"{scheme}://{host}{'' if port == default else f':{port}'}"
        f"{'' if location == '/' or type == 'https' else location}"
        for scheme, port, default in schemes
        for host in hosts
        for location in (locations if type == "http" else ("/",))
    ]
    return tuple(dict.fromkeys(urls))[:MAX_LIST_ITEMS]
