//! Shared by job-prep's integration tests.

use std::time::Duration;

use hpcs_client::ssh::SshTarget;
use hpcs_test_support::Stack;

/// alice on the test stack's sshd, with strict host-key checking.
pub fn alice_target(stack: &Stack) -> SshTarget {
    SshTarget {
        host: stack.ssh_host.clone(),
        port: stack.ssh_port,
        user: stack.alice.name.to_owned(),
        key: Some(stack.alice.ssh_key.clone()),
        known_hosts: stack.ssh_known_hosts.clone(),
        accept_new: false,
        connect_timeout: Duration::from_secs(10),
        op_timeout: Duration::from_secs(60),
        keepalive: Duration::from_secs(15),
    }
}
