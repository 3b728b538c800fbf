"""`python -m pipeline.virtual_k1 up|status|down`: an emulated riscv64 board (qemu-user,
a Debian root file system, its own sshd) that the bench treats like a K1."""
