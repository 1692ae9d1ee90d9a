{{/*
What values.schema.json cannot say: settings that depend on each other. Each failure names
the value to change. Included once, by gateway.yaml.
*/}}
{{- define "mcp-cluster.validate" -}}
{{- $_ := include "mcp-cluster.publicUrl" . }}
{{- $_ := include "mcp-cluster.natsUrl" . }}

{{- with .Values.gateway }}
{{- if le (int .terminationGracePeriodSeconds) (add .preStopSleepSeconds .drainTimeoutSeconds 1 | int) }}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%v) must exceed gateway.preStopSleepSeconds + gateway.drainTimeoutSeconds + 1 (%v)" .terminationGracePeriodSeconds (add .preStopSleepSeconds .drainTimeoutSeconds 1)) }}
{{- end }}
{{- end }}

{{- with .Values.worker }}
{{- /* The worker's drain (session-worker/src/lib.rs): give the leases back, let actors and
       stateless requests finish, end running tasks — each bounded by the drain timeout —
       then leave (2 s) and flush NATS (1 s). */}}
{{- $need := add .preStopSleepSeconds (mul 3 .drainTimeoutSeconds) 3 }}
{{- if le (int .terminationGracePeriodSeconds) (int $need) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must exceed worker.preStopSleepSeconds + 3 x worker.drainTimeoutSeconds + 3 (%v)" .terminationGracePeriodSeconds $need) }}
{{- end }}
{{- end }}

{{- with .Values.auth }}
{{- /* auth-service/src/lib.rs DRAIN_TIMEOUT: 10 s. */}}
{{- if le (int .terminationGracePeriodSeconds) (add .preStopSleepSeconds 10 | int) }}
{{- fail (printf "auth.terminationGracePeriodSeconds (%v) must exceed auth.preStopSleepSeconds + 10 (the auth-service's drain)" .terminationGracePeriodSeconds) }}
{{- end }}
{{- end }}

{{- with .Values.auth }}
{{- if not (or .vaultKeys.value .vaultKeys.existingSecret) }}
{{- fail "auth.vaultKeys.value or auth.vaultKeys.existingSecret is required (AUTH_VAULT_KEYS; `auth-service gen-keys` prints one)" }}
{{- end }}
{{- if not (or .cookieKey.value .cookieKey.existingSecret) }}
{{- fail "auth.cookieKey.value or auth.cookieKey.existingSecret is required (COOKIE_ENCRYPTION_KEY; `auth-service gen-keys` prints one)" }}
{{- end }}
{{- if and .cookieKey.value (lt (len .cookieKey.value) 32) }}
{{- fail "auth.cookieKey.value must be at least 32 characters" }}
{{- end }}
{{- $idp := .idp }}
{{- if eq $idp.preset "static-users" }}
{{- if not (or $idp.staticUsers.users $idp.staticUsers.existingSecret) }}
{{- fail "auth.idp.preset static-users needs auth.idp.staticUsers.users or auth.idp.staticUsers.existingSecret" }}
{{- end }}
{{- else }}
{{- if not $idp.clientId }}
{{- fail (printf "auth.idp.clientId is required for auth.idp.preset %s" $idp.preset) }}
{{- end }}
{{- if not (or $idp.clientSecret.value $idp.clientSecret.existingSecret) }}
{{- fail (printf "auth.idp.clientSecret.value or auth.idp.clientSecret.existingSecret is required for auth.idp.preset %s" $idp.preset) }}
{{- end }}
{{- end }}
{{- if and (eq $idp.preset "oidc") (not $idp.oidc.issuer) }}
{{- fail "auth.idp.oidc.issuer is required for auth.idp.preset oidc" }}
{{- end }}
{{- if and (eq $idp.preset "cloudflare-access") (not (and $idp.cloudflareAccess.tokenUrl $idp.cloudflareAccess.authorizationUrl $idp.cloudflareAccess.jwksUrl)) }}
{{- fail "auth.idp.cloudflareAccess.tokenUrl, authorizationUrl and jwksUrl are required for auth.idp.preset cloudflare-access" }}
{{- end }}
{{- if and (eq $idp.preset "pingone") (not $idp.pingone.issuer) }}
{{- fail "auth.idp.pingone.issuer is required for auth.idp.preset pingone" }}
{{- end }}
{{- if and (eq $idp.preset "entra") (not $idp.entra.tenantId) }}
{{- fail "auth.idp.entra.tenantId is required for auth.idp.preset entra" }}
{{- end }}
{{- end }}
{{- end }}
