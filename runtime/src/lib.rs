//! `ember-runtime`: the sandbox runtime and the `ember` CLI.
