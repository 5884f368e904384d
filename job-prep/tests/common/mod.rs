//! Shared by job-prep's integration tests.

use std::time::Duration;

use hpcs_client::ssh::SshTarget;
use hpcs_test_support::Stack;

/// alice on the test stack's sshd, with strict host-key checking.
pub fn alice_target(stack: &Stack) -> SshTarget {
    SshTarget {
        connect_timeout: Duration::from_secs(10),
        op_timeout: Duration::from_secs(60),
        ..SshTarget::new(
            stack.ssh_host.clone(),
            stack.ssh_port,
            stack.alice.name,
            Some(stack.alice.ssh_key.clone()),
            stack.ssh_known_hosts.clone(),
        )
    }
}
