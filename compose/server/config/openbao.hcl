# OpenBao of the compose stack: integrated (raft) storage in the openbao-data volume.
# Initialised and unsealed by ../bootstrap; Vault configuration for HPCS: deploy/vault/.
ui = false
# Raft storage is memory-mapped; mlock is not used with it.
disable_mlock = true
api_addr = "http://openbao:8200"
cluster_addr = "http://openbao:8201"

storage "raft" {
  path = "/openbao/file"
  node_id = "openbao-1"
}

# Plain HTTP because compose publishes this port on 127.0.0.1 only (HPCS_BIND_ADDRESS). To serve
# laptops and compute nodes on other hosts, set tls_cert_file / tls_key_file here and drop
# tls_disable (README.md, "Exposing the stack").
listener "tcp" {
  address = "0.0.0.0:8200"
  tls_disable = true
}

# Audit device: every request and response (secret values HMAC'd), in the openbao-logs volume.
# OpenBao only creates audit devices declared here, not through its API.
audit "file" "file" {
  description = "HPCS compose stack audit log"
  options {
    file_path = "/openbao/logs/audit.log"
  }
}
