"""The secret rules, as data: which keys name a secret, and which values are one wherever they sit.

Everything ``redact.py`` and ``secretscan.py`` know about what a secret looks like is declared here, each
rule with where its facts come from (``source``). The catalogues cited are gitleaks' default configuration
(``config/gitleaks.toml``, generated from ``cmd/generate/config/rules/*.go``), Yelp's detect-secrets
plugins and trufflesecurity's trufflehog detectors; the expressions are written for this project (they
match the JSON text of an event as ``orjson`` writes it, where a newline is the two characters ``\\n`` and
a quote inside a string is ``\\"``, as well as plain text).

*Key rules* are searched in the ``snake_case`` form of a key (``dbPassword`` -> ``db_password``,
``x-api-key`` -> ``x_api_key``, ``DB_PASS`` -> ``db_pass``); see ``redact.py`` for the exemptions that keep
``secretKeyRef``, ``passwordFile``, ``tokenType`` ... as they are.

*Value rules* are found by one Hyperscan database built from their ``trigger`` expressions (the place a
match starts, reported leftmost-first, or for ``starts_at_key`` rules the key before a ``:`` or ``=``);
each report is then confirmed by the rule's Python ``pattern``, matched at that start, whose group ``s``
is the secret (the rest of the match, the context that
binds the rule, stays readable). A rule with ``key_group`` also needs that group to be a secret-looking key
(``password=...`` yes, ``password_file=...`` no). ``index_whole``: the whole match is indexed for
``spintrail hash`` too (a webhook URL is looked for whole as often as by its secret part).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KEY_RULES", "VALUE_RULES", "KeyRule", "ValueRule", "ci"]


@dataclass(frozen=True, slots=True)
class KeyRule:
    id: str
    pattern: str  # searched case-insensitively in the snake_case form of a key
    source: str


@dataclass(frozen=True, slots=True)
class ValueRule:
    id: str
    trigger: str  # Hyperscan expression: where a match starts
    pattern: str  # Python expression matched at that start; group "s" (or dq/sq/bare) is the secret
    context: str  # what binds the rule (the key, the command, the URL part), for the reader
    source: str
    key_group: str | None = None  # this group must be a secret-looking key
    index_whole: bool = False
    #: The trigger ends at the ``:`` or ``=`` after a key, and the match starts where that key starts
    #: (tracking where a match starts costs Hyperscan more for this rule than all the others together).
    starts_at_key: bool = False


def ci(word: str) -> str:
    """``word`` matched without regard to case (Hyperscan's caseless flag would apply to a whole rule)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


# --------------------------------------------------------------------------------------------- keys

KEY_RULES: tuple[KeyRule, ...] = (
    KeyRule("password", r"pass(word|wd|phrase)", "gitleaks generic-api-key; detect-secrets KeywordDetector"),
    KeyRule("pass", r"(^|_)(pass|pwd|pw)(_|$)", "detect-secrets KeywordDetector (pass, pwd)"),
    KeyRule("secret", r"secret", "gitleaks generic-api-key keywords (secret, client_secret)"),
    KeyRule("token", r"token(_|$)", "gitleaks generic-api-key keywords (token, access_token)"),
    KeyRule("auth", r"(^|_)auth$", "docker config.json auths.*.auth; detect-secrets KeywordDetector"),
    KeyRule("authorization", r"authorization", "RFC 9110 Authorization / Proxy-Authorization"),
    KeyRule("api-key", r"api_?key", "gitleaks generic-api-key keywords (api_key, x-api-key)"),
    KeyRule("private-key", r"private_?key", "gitleaks private-key; GCP service-account key file private_key"),
    KeyRule("ssh-key", r"(^|_)ssh_?key$", "trufflehog privatekey detector (keys pasted as ssh_key)"),
    KeyRule("access-key", r"access_?key", "gitleaks aws-access-token context (aws_secret_access_key)"),
    KeyRule("key-data", r"(^|_)key_data$", "kubeconfig client-key-data (a base64 private key)"),
    KeyRule("named-key", r"(signing|encryption|master)_key", "detect-secrets KeywordDetector"),
    KeyRule("credentials", r"credentials?$", "detect-secrets KeywordDetector; see the account-name rule"),
    KeyRule("hub-signature", r"hub_signature", "GitHub webhook X-Hub-Signature(-256)"),
    KeyRule("cookie", r"cookie", "RFC 6265 Cookie / Set-Cookie"),
    KeyRule("jwt", r"(^|_)jwt(_|$)", "gitleaks jwt"),
    KeyRule("connection-string", r"connection_?string", "detect-secrets AzureStorageKeyDetector context"),
)  # fmt: skip

#: Words any secret-looking key contains, for the Hyperscan triggers over JSON keys (a superset of
#: ``KEY_RULES``: the exact decision is ``redact.py``'s, on the key).
#: ``credential(s)`` and a final ``auth`` or ``pw`` have triggers of their own (most ``credentials`` are
#: account names, most keys starting with ``auth`` are ``authentication``, ``keePWaiting`` is no password).
KEY_WORDS: tuple[str, ...] = (
    "pass", "pwd", "secret", "token", "authorization", "api.?key", "private.?key", "ssh.?key",
    "access.?key", "key.?data", "signing.?key", "encryption.?key", "master.?key", "signature", "cookie",
    "jwt", "connection.?string",
)  # fmt: skip

# --------------------------------------------------------------------------------------------- values

#: A secret value that is a reference, not a value: ``$VAR``, ``${VAR}``, ``$(VAR)``, ``{{ x }}``, ``<x>``,
#: ``****``, ``null``/``true``/``false``, already hashed.
_NOT_REFERENCE = (
    r"(?!\$[{(A-Za-z_]|\{\{|<|\*{3}|(?:null|true|false|none|undefined)\b|hmac-sha256:"
    r"|(?i:bearer|basic|digest|negotiate|splunk|token|sso-key|apikey)[ \t])"
)
#: Whitespace as plain text or as JSON escapes.
_WS = r"(?:[ \t]|\\[nrt])"
#: A quoted or bare value in free text and commands (JSON-escaped double quotes too).
_VALUE = (
    r"(?:\\\"" + _NOT_REFERENCE + r"(?P<dq>(?:[^\"\\]|\\[^\"])+?)\\\""
    r"|'" + _NOT_REFERENCE + r"(?P<sq>[^'\\\"]+)'"
    r"|" + _NOT_REFERENCE + r"(?P<bare>[^\s&;,\"'\\<>(){}\[\]|`]+))"
)
_SECRET_WORDS = (
    r"(?i:pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|ssh[_-]?key|auth|credentials?|jwt|signature|sig)"
)
_HS_SECRET_WORDS = (
    "("
    + "|".join(ci(w) for w in ("pass", "pwd", "secret", "token", "jwt", "auth", "credential", "signature"))
    + "|" + ci("api") + "[_-]?" + ci("key") + "|" + ci("access") + "[_-]?" + ci("key")
    + "|" + ci("private") + "[_-]?" + ci("key") + "|" + ci("ssh") + "[_-]?" + ci("key") + ")"
)
_KEY_CHARS = r"[A-Za-z0-9_.-]"
_PEM_BEGIN = r"-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----"

VALUE_RULES: tuple[ValueRule, ...] = (
    ValueRule(
        "private-key",
        trigger=r"-----BEGIN[ A-Z0-9_-]{0,40}PRIVATE KEY",
        pattern=r"(?P<s>" + _PEM_BEGIN + r"(?:[^\"\\]|\\[nrt/\\])*?(?:-----END[ A-Z0-9_-]{0,100}PRIVATE KEY"
        r"(?: BLOCK)?-----|(?=[\"]|\Z)))",
        context="anywhere: PEM (PKCS#1, PKCS#8, EC, DSA, encrypted), OpenSSH and PGP private key blocks",
        source="gitleaks private-key; detect-secrets PrivateKeyDetector; trufflehog privatekey",
    ),
    ValueRule(
        "url-userinfo",
        trigger=r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@\"\\]*:[^@\s/\"\\]+@",
        pattern=r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@\"\\]*:" + _NOT_REFERENCE + r"(?P<s>[^@\s/\"\\]+)@",
        context="the password part of a URL's user-info (scheme://user:password@host)",
        source="detect-secrets BasicAuthDetector; trufflehog uri",
    ),
    ValueRule(
        "url-query-secret",
        trigger=r"[?&][A-Za-z0-9_.-]*(" + _HS_SECRET_WORDS + "|" + ci("sig") + r")[A-Za-z0-9_.-]*=",
        pattern=r"[?&](?P<k>" + _KEY_CHARS + r"+)=" + _NOT_REFERENCE + r"(?P<s>[^&#\s\"'\\]+)",
        context="a URL query parameter whose name is secret-looking (?token=, ?jwt=, ?api_key=, &sig=)",
        source="gitleaks generic-api-key keywords; Azure SAS sig=, AWS X-Amz-Signature=",
        key_group="k",
    ),
    ValueRule(
        "authorization-header",
        trigger=ci("authorization") + r"(\\\"|')?[ \t]*[:=]",
        pattern=r"(?i:(?:proxy-)?authorization)(?:\\\"|')?[ \t]*[:=][ \t]*+(?:\\\"|')?"
        r"(?:(?i:bearer|basic|token|splunk|digest|negotiate|apikey|sso-key|bot)[ \t]++)?+"
        + _NOT_REFERENCE + r"(?P<s>[^\s\"',;\\]+)",
        context="the credential of an Authorization header written in text (curl -H, scripts)",
        source="gitleaks curl-auth-header; detect-secrets KeywordDetector",
    ),
    ValueRule(
        "cookie-header",
        trigger=r"(" + ci("set-") + ")?" + ci("cookie") + r"(\\\"|')?[ \t]*:",
        pattern=r"(?i:(?:set-)?cookie)(?:\\\"|')?[ \t]*:[ \t]*+(?:\\\"|')?" + _NOT_REFERENCE
        + r"(?P<s>[^\"\\']+)",
        context="the value of a Cookie / Set-Cookie header written in text (to the end of the header)",
        source="RFC 6265; gitleaks curl-auth-header (header credentials)",
    ),
    ValueRule(
        "bearer",
        trigger=ci("bearer") + r"[ \t]+[A-Za-z0-9._~+/-]{8}",
        pattern=r"(?i:bearer)[ \t]+" + _NOT_REFERENCE + r"(?P<s>[A-Za-z0-9._~+/-]{8,}=*)",
        context="a bearer credential anywhere in text",
        source="RFC 6750 b64token; gitleaks curl-auth-header",
    ),
    ValueRule(
        "jwt",
        trigger=r"eyJ[A-Za-z0-9_-]{10,}\.eyJ",
        pattern=r"(?P<s>eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*)",
        context="anywhere: a JSON Web Token (header and claims start with base64 of '{\"')",
        source="gitleaks jwt; detect-secrets JwtTokenDetector",
    ),
    ValueRule(
        "aws-access-key-id",
        trigger=r"(A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}",
        pattern=r"\b(?P<s>(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b",
        context="anywhere: an AWS access key id",
        source="gitleaks aws-access-token; detect-secrets AWSKeyDetector",
    ),
    ValueRule(
        "aws-secret-access-key",
        trigger=ci("aws") + r"[A-Za-z0-9_.-]{0,20}" + ci("secret") + r"[A-Za-z0-9_.-]{0,20}",
        pattern=r"(?i:aws)" + _KEY_CHARS + r"{0,20}(?i:secret)" + _KEY_CHARS + r"{0,20}(?:\\\"|')?[ \t]*[:=]"
        r"[ \t]*(?:\\\"|')?(?P<s>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])",
        context="40 base64 characters after an aws...secret name (aws_secret_access_key = ...)",
        source="detect-secrets AWSKeyDetector (secret key); gitleaks aws-access-token",
    ),
    ValueRule(
        "gcp-api-key",
        trigger=r"AIza[0-9A-Za-z_-]{35}",
        pattern=r"\b(?P<s>AIza[0-9A-Za-z_-]{35})(?![0-9A-Za-z_-])",
        context="anywhere: a Google API key",
        source="gitleaks gcp-api-key",
    ),
    ValueRule(
        "azure-storage-key",
        trigger=r"(" + ci("accountkey") + "|" + ci("sharedaccesskey") + r")=",
        pattern=r"(?i:AccountKey|SharedAccessKey)=(?P<s>[A-Za-z0-9+/]{20,}={0,2})",
        context="AccountKey= / SharedAccessKey= of an Azure storage, Service Bus or Event Hubs connection "
        "string",
        source="detect-secrets AzureStorageKeyDetector; trufflehog azure",
    ),
    ValueRule(
        "github-token",
        trigger=r"(gh[pousr]_[0-9A-Za-z]{36}|github_pat_[0-9A-Za-z_]{22})",
        pattern=r"(?<![0-9A-Za-z_])(?P<s>gh[pousr]_[0-9A-Za-z]{36,251}|github_pat_[0-9A-Za-z_]{22,255})",
        context="anywhere: GitHub personal, OAuth, app, refresh and fine-grained tokens",
        source="gitleaks github-pat, github-oauth, github-app-token, github-refresh-token, "
        "github-fine-grained-pat",
    ),
    ValueRule(
        "gitlab-token",
        trigger=r"(gl(pat|dt|rt|cbt|ptt|oas|soat|ft|imt|agent)-[0-9A-Za-z_-]{20}|GR1348941[0-9A-Za-z_-]{20})",
        pattern=r"(?<![0-9A-Za-z_-])(?P<s>gl(?:pat|dt|rt|cbt|ptt|oas|soat|ft|imt|agent)-[0-9A-Za-z_.-]{20,}"
        r"|GR1348941[0-9A-Za-z_-]{20,})",
        context="anywhere: GitLab personal, deploy, runner, pipeline-trigger and CI tokens",
        source="gitleaks gitlab-pat, gitlab-ptt, gitlab-rrt, gitlab-deploy-token, gitlab-runner-token",
    ),
    ValueRule(
        "atlassian-token",
        trigger=r"(ATBB|ATCTT3|ATATT3)[A-Za-z0-9_=-]{24}",
        pattern=r"(?<![A-Za-z0-9])(?P<s>(?:ATBB|ATCTT3|ATATT3)[A-Za-z0-9_=-]{24,})",
        context="anywhere: Bitbucket app passwords and access tokens, Atlassian API tokens",
        source="gitleaks atlassian-api-token; trufflehog bitbucketapppassword",
    ),
    ValueRule(
        "npm-token",
        trigger=r"npm_[A-Za-z0-9]{36}",
        pattern=r"(?<![A-Za-z0-9_])(?P<s>npm_[A-Za-z0-9]{36})(?![A-Za-z0-9])",
        context="anywhere: an npm access token",
        source="gitleaks npm-access-token",
    ),
    ValueRule(
        "pypi-token",
        trigger=r"pypi-AgEIcHlwaS5vcmc",
        pattern=r"(?P<s>pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,1000})",
        context="anywhere: a PyPI upload token",
        source="gitleaks pypi-upload-token",
    ),
    ValueRule(
        "slack-token",
        trigger=r"xox[abposer]-[0-9A-Za-z]{10}",
        pattern=r"(?<![A-Za-z0-9])(?P<s>xox[abposer]-[0-9A-Za-z-]{10,})",
        context="anywhere: Slack bot, user, app and configuration tokens",
        source="gitleaks slack-bot-token, slack-user-token, slack-legacy-token",
    ),
    ValueRule(
        "slack-webhook",
        trigger=r"(https?://)?hooks\.slack\.com/(services|workflows|triggers)/",
        pattern=r"(?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/(?P<s>[A-Za-z0-9+/_-]{20,})",
        context="the path of a Slack incoming-webhook URL",
        source="gitleaks slack-webhook-url",
        index_whole=True,
    ),
    ValueRule(
        "teams-webhook",
        trigger=r"(https://[a-z0-9-]+)?\.webhook\.office\.com/webhookb2/",
        pattern=r"(?:https://[a-z0-9-]+)?\.webhook\.office\.com/webhookb2/(?P<s>[A-Za-z0-9@/_-]{40,})",
        context="the path of a Microsoft Teams incoming-webhook URL",
        source="gitleaks microsoft-teams-webhook",
        index_whole=True,
    ),
    ValueRule(
        "discord-webhook",
        trigger=r"(https?://)?discord(app)?\.com/api/webhooks/[0-9]",
        pattern=r"(?:https?://)?discord(?:app)?\.com/api/webhooks/(?P<s>[0-9]{5,20}/[A-Za-z0-9_-]{20,})",
        context="the id and token of a Discord webhook URL",
        source="trufflehog discordwebhook; gitleaks discord-api-token",
        index_whole=True,
    ),
    ValueRule(
        "registry-login-password",
        trigger=r"(docker|podman|buildah|nerdctl|skopeo|helm|oras|crane)([ \t]+registry)?[ \t]+login[ \t]",
        pattern=r"(?:docker|podman|buildah|nerdctl|skopeo|helm|oras|crane)(?:[ \t]+registry)?[ \t]+login[ \t]"
        r"(?:[^\\\";&|\n]|\\\")*?(?<=[ \t])(?:-p|--password)(?:[ \t]+|=)" + _VALUE,
        context="the -p / --password of a registry login command (docker login -p ...); -p of other "
        "commands (docker run -p 8080:80, ssh -p 22, kubectl patch -p) is not bound",
        source="trufflehog (docker login credentials); gitleaks generic-api-key",
    ),
    ValueRule(
        "password-flag",
        trigger=r"--([a-z0-9]+-)*("
        + "|".join(ci(w) for w in ("password", "passwd", "pass", "token", "secret"))
        + r"|api-?key|access-key|secret-key|client-secret)[ \t=]",
        pattern=r"--(?:[a-z0-9]+-)*(?i:password|passwd|pass|token|secret|api-?key|access-key|secret-key"
        r"|client-secret)(?:[ \t]+|=)" + _VALUE,
        context="a command-line option whose name ends in password, token, secret or api key",
        source="gitleaks curl-auth-user; detect-secrets KeywordDetector",
    ),
    ValueRule(
        "short-password-flag",
        trigger=r"(sshpass|mysql|mysqldump|mysqladmin|mariadb|redis-cli)[ \t]",
        pattern=r"(?:(?:sshpass)(?:[^\\\";&|\n]|\\\")*?(?<=[ \t])-p[ \t]*"
        r"|(?:mysql|mysqldump|mysqladmin|mariadb)(?:[^\\\";&|\n]|\\\")*?(?<=[ \t])-p"
        r"|redis-cli(?:[^\\\";&|\n]|\\\")*?(?<=[ \t])-a[ \t]+)" + _VALUE,
        context="the password flag of commands where -p (-a) means password: sshpass -p, "
        "mysql -pPASS, redis-cli -a",
        source="trufflehog (command-line credentials); detect-secrets KeywordDetector",
    ),
    ValueRule(
        "curl-user",
        trigger=r"(curl|wget|http)[ \t]",
        pattern=r"(?:curl|wget|http)(?:[^\\\";&|\n]|\\\")*?(?<=[ \t])(?:-u|--user)"
        r"(?:[ \t]+|=)(?:\\\"|')?[^\s:\"'\\]*:" + _NOT_REFERENCE + r"(?P<s>[^\s\"'\\]+)",
        context="the password of curl -u user:password (wget --password)",
        source="gitleaks curl-auth-user",
    ),
    ValueRule(
        "generic-assignment",
        trigger=_HS_SECRET_WORDS + r"[A-Za-z0-9_.-]*(\\\"|')?[ \t]*[:=]",
        pattern=r"(?P<k>" + _KEY_CHARS + r"*?" + _SECRET_WORDS + _KEY_CHARS + r"*)(?:\\\"|')?[ \t]*[:=]"
        r"(?!//)[ \t]*+" + _VALUE,
        context="key=value, key: value, \"key\": \"value\" in text, where the key is secret-looking as a "
        "key rule decides (password_file=, token_count: are kept)",
        source="gitleaks generic-api-key; detect-secrets KeywordDetector",
        key_group="k",
        starts_at_key=True,
    ),
)
