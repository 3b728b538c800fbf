"""What every subsystem shares: params and their schema, the variants and format registries,
the artifact layout, atomic files, datasets, the board inventory, the host runtimes, console
and text helpers. core imports nothing from the other subsystems."""
