{{/*
The paths the auth-service serves on the public origin: the ONE copy in this chart of
proto::auth::PUBLIC_PATHS (exact paths) and proto::auth::PUBLIC_PREFIXES (RFC 8414 inserts
the issuer's path after them, so they are prefixes). The Ingress routes these to the
auth-service and everything else to the gateways. tests/deploy/test_helm.py parses the two
arrays out of proto/src/auth.rs and fails when this list and the rendered Ingress differ.
`/.well-known/oauth-protected-resource…` (RFC 9728) is the gateway's, not listed here.
*/}}
{{- define "mcp-cluster.oauthExactPaths" -}}
- /authorize
- /token
- /register
- /revoke
- /introspect
- /jwks.json
- /consent
- /login
- /callback
{{- end }}

{{- define "mcp-cluster.oauthPrefixes" -}}
- /.well-known/oauth-authorization-server
- /.well-known/openid-configuration
{{- end }}
