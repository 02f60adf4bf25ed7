// Present so that `governor` can name this crate as a build-dependency, which
// makes cargo rebuild it when the kernel programs change (see aya-build).
#![no_std]
