path "sys/policy/hpcs-secret-*" {
  # Per-secret ACL policies: hpcs-secret-<id>-read (read one key record) and
  # hpcs-secret-<id>-write (create it once). Only names under hpcs-secret-, and the body must
  # start with a path rule on this KV mount's data. (sys/policy/ is the ACL policy endpoint the
  # server's client library uses; sys/policies/acl/ is deliberately not granted.)
  capabilities = ["create", "update", "delete"]
  allowed_parameters = {
    "policy" = ["path \"@KV_MOUNT@/data/*"]
    # The client library repeats the name in the body.
    "name"   = ["hpcs-secret-*"]
  }
}

path "auth/@AUTH_MOUNT@/role/hpcs-secret-*" {
  # Per-secret jwt roles. Every parameter is pinned: a role can only admit the reader SPIFFE ID
  # of an HPCS secret, with the reader audience, and only attach one hpcs-secret-*-read policy.
  # Any parameter not listed (bound_claims, claim_mappings, token_period, templated policies...)
  # is refused. List parameters must be sent as a single string: a JSON array never matches
  # allowed_parameters, and a comma in a string would smuggle in a second value, hence the
  # denied "*,*".
  capabilities = ["create", "update", "delete"]
  allowed_parameters = {
    "role_type"               = ["jwt"]
    "user_claim"              = ["sub"]
    "bound_subject"           = ["spiffe://@TRUST_DOMAIN@/hpcs/secret/*"]
    "bound_audiences"         = ["@AUDIENCE@"]
    "token_policies"          = ["hpcs-secret-*"]
    "token_ttl"               = []
    "token_max_ttl"           = []
    "token_num_uses"          = []
    "token_type"              = ["service"]
  }
  denied_parameters = {
    "token_policies" = ["*-write", "*,*"]
    "bound_subject"  = ["*,*"]
  }
}

path "auth/token/create/@WRITER_TOKEN_ROLE@" {
  # Write-once tokens for owners. The token role (deploy/vault/setup) only allows policies
  # matching hpcs-secret-*-write, forces one use, orphan and non-renewable.
  capabilities = ["update"]
}

path "@KV_MOUNT@/data/_registry/*" {
  # The server's registry of secrets (owner, readers, nodes, SPIRE entry IDs).
  capabilities = ["create", "read", "update", "delete"]
}

path "@KV_MOUNT@/metadata/_registry/*" {
  capabilities = ["list", "delete"]
}

path "@KV_MOUNT@/metadata/*" {
  # Revocation destroys a key record (all versions). No read of any key: the server never sees
  # one.
  capabilities = ["delete"]
}

path "auth/token/lookup-self" {
  # Readiness probe.
  capabilities = ["read"]
}

path "auth/token/revoke-self" {
  # Logout on shutdown.
  capabilities = ["update"]
}
