/* ocivm-init, built as its own static binary, embedded in ocivm so that the
   initramfs can always be (re)built from the running binary alone. */
    .section .rodata
    .global ocivm_init_start
    .global ocivm_init_end
    .balign 16
ocivm_init_start:
    .incbin OCIVM_INIT_PATH
ocivm_init_end:
    .section .note.GNU-stack,"",@progbits
