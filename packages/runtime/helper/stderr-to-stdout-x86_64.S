# The exec helper of @stacker/runtime (x86_64, static, no libc).
#
# runc in the foreground gives a container separate stdout and stderr pipes and copies each on its
# own, which loses their relative order. The helper runs as the container's first program (passed
# in as fd 3), points stderr at stdout, and execs the real command:
#
#   helper <path> <argv0> <argv1>...   ->   execve(path, [argv0, argv1, ...], envp)
#
# On failure it prints "stacker: cannot execute <path>" on stderr and exits 127.
# Build: see build.sh beside this file; the bytes are embedded in src/exec-helper.ts.

    .globl _start
    .text
_start:
    mov     $3, %edi            # close(3): the helper's own fd must not leak into the command
    mov     $3, %eax
    syscall
    mov     $1, %edi            # dup2(1, 2)
    mov     $2, %esi
    mov     $33, %eax
    syscall
    mov     (%rsp), %rcx        # argc
    mov     16(%rsp), %r12      # argv[1]: path
    lea     24(%rsp), %rsi      # &argv[2]: the command's argv
    lea     16(%rsp,%rcx,8), %rdx   # envp = &argv[argc + 1]
    mov     %r12, %rdi
    mov     $59, %eax           # execve
    syscall

    mov     $2, %edi            # write(2, prefix)
    lea     prefix(%rip), %rsi
    mov     $prefix_len, %edx
    mov     $1, %eax
    syscall
    xor     %edx, %edx          # strlen(path), path may be NULL
    test    %r12, %r12
    jz      2f
1:  cmpb    $0, (%r12,%rdx)
    je      2f
    inc     %rdx
    jmp     1b
2:  mov     $2, %edi            # write(2, path)
    mov     %r12, %rsi
    mov     $1, %eax
    syscall
    mov     $2, %edi            # write(2, "\n")
    lea     newline(%rip), %rsi
    mov     $1, %edx
    mov     $1, %eax
    syscall
    mov     $127, %edi          # exit(127)
    mov     $60, %eax
    syscall

prefix:
    .ascii  "stacker: cannot execute "
    .set    prefix_len, . - prefix
newline:
    .ascii  "\n"
