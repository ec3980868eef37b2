// The guest half of bench/streambench.sh (static, run inside the VM from a
// share): times N stat, N create+unlink and N 4 KiB O_DIRECT reads in DIR
// and prints "WORKLOAD US_PER_OP" lines. O_DIRECT and the host's
// --cache never make every operation a request to the share's server.
//   streambench-guest DIR N
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_us() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: streambench-guest DIR N\n");
        return 2;
    }
    const char* dir = argv[1];
    long n = atol(argv[2]);
    char path[4096], file[4096];
    snprintf(file, sizeof file, "%s/bench.dat", dir);
    int fd = open(file, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    static char buf[4096] __attribute__((aligned(4096)));
    memset(buf, 'x', sizeof buf);
    for (int i = 0; i < 256; ++i)
        if (fd < 0 || write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) {
            perror(file);
            return 1;
        }
    close(fd);

    struct stat st;
    double t0 = now_us();
    for (long i = 0; i < n; ++i)
        if (stat(file, &st) < 0) {
            perror("stat");
            return 1;
        }
    printf("stat %.1f\n", (now_us() - t0) / n);

    t0 = now_us();
    for (long i = 0; i < n; ++i) {
        snprintf(path, sizeof path, "%s/f%ld", dir, i);
        int f = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (f < 0 || close(f) < 0 || unlink(path) < 0) {
            perror(path);
            return 1;
        }
    }
    printf("create+unlink %.1f\n", (now_us() - t0) / n);

    fd = open(file, O_RDONLY | O_DIRECT);
    if (fd < 0) {
        perror("O_DIRECT open");
        return 1;
    }
    t0 = now_us();
    for (long i = 0; i < n; ++i)
        if (pread(fd, buf, sizeof buf, (off_t)(i % 256) * 4096) != (ssize_t)sizeof buf) {
            perror("pread");
            return 1;
        }
    printf("read-4k %.1f\n", (now_us() - t0) / n);
    close(fd);
    unlink(file);
    return 0;
}
