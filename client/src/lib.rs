//! Client-side plumbing shared by the HPCS prep tools.
