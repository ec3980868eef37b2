// parbench_guest: the guest half of bench/parbench.sh. Runs inside the VM
// (busybox only, so built static) on the virtio-fs share: N reader processes
// time random 4 KiB O_DIRECT reads of one file, one writer writes a big file
// and fsyncs it; prints one PARBENCH line with the readers' latencies over
// the window the fsync ran in, and the total time.
//
//   parbench_guest --read-file F --write-file F [--readers 4] [--write-mib 256]
//                  [--min-reads 500] [--max-samples 4000000]
//
// Readers read until the writer's fsync has returned and each has done at
// least --min-reads, so that the fsync window always has readers in it. The
// total time is from the start signal to the last process's end.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace {

constexpr int kMaxReaders = 64;
constexpr size_t kBlock = 4096;

struct Sample {
    int64_t start_ns, end_ns;
};

// In a MAP_SHARED mapping: written by the children, read by the parent
// once they have exited.
struct Shared {
    std::atomic<int> writer_done;
    int64_t t0;  // the start signal
    int64_t write_start, fsync_start, fsync_end, writer_end;
    int64_t reader_end[kMaxReaders];
    uint64_t reader_count[kMaxReaders];
};

int64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

[[noreturn]] void die(const char* what, int err = 0) {
    std::fprintf(stderr, "PARBENCH-ERROR %s%s%s\n", what, err ? ": " : "", err ? strerror(err) : "");
    std::exit(1);
}

void* map_shared(size_t bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) die("mmap", errno);
    return p;
}

// Blocks until the parent closes the write end of the start pipe: every
// child is released by the same event.
void wait_for_start(int start_fd) {
    char c;
    while (read(start_fd, &c, 1) < 0 && errno == EINTR) {
    }
}

[[noreturn]] void reader(int idx, Shared* sh, Sample* samples, size_t max_samples, const char* path,
                         uint64_t min_reads, int start_fd) {
    // O_DIRECT: every read is a READ request to the server, in every cache
    // mode (the guest page cache would answer repeated reads otherwise).
    int fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0) die("open O_DIRECT of the read file (does this virtio-fs mount take O_DIRECT?)", errno);
    struct stat st;
    if (fstat(fd, &st) != 0) die("fstat", errno);
    uint64_t blocks = uint64_t(st.st_size) / kBlock;
    if (blocks < 16) die("the read file is too small");
    void* buf = std::aligned_alloc(kBlock, kBlock);
    if (!buf) die("aligned_alloc");
    uint64_t x = 0x9e3779b97f4a7c15ULL * uint64_t(idx + 1);  // xorshift64 state
    wait_for_start(start_fd);
    uint64_t n = 0;
    for (;;) {
        if (n >= min_reads && sh->writer_done.load(std::memory_order_acquire)) break;
        if (n == max_samples) die("reader sample buffer full: raise --max-samples");
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        off_t off = off_t((x % blocks) * kBlock);
        int64_t s = now_ns();
        ssize_t got = pread(fd, buf, kBlock, off);
        int64_t e = now_ns();
        if (got != ssize_t(kBlock)) die("pread of the read file", got < 0 ? errno : EIO);
        samples[n++] = {s, e};
    }
    sh->reader_count[idx] = n;
    sh->reader_end[idx] = now_ns();
    _exit(0);
}

[[noreturn]] void writer(Shared* sh, const char* path, int mib, int start_fd) {
    std::vector<char> buf(1 << 20);
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = char('a' + i % 23);
    wait_for_start(start_fd);
    sh->write_start = now_ns();
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0) die("open of the write file", errno);
    for (int i = 0; i < mib; ++i) {
        size_t done = 0;
        while (done < buf.size()) {
            ssize_t w = write(fd, buf.data() + done, buf.size() - done);
            if (w < 0) die("write", errno);
            done += size_t(w);
        }
    }
    sh->fsync_start = now_ns();
    if (fsync(fd) != 0) die("fsync", errno);
    sh->fsync_end = now_ns();
    sh->writer_done.store(1, std::memory_order_release);
    if (close(fd) != 0) die("close of the write file", errno);
    sh->writer_end = now_ns();
    _exit(0);
}

// Nearest-rank percentile of sorted values.
double pct(const std::vector<int64_t>& v, double p) {
    if (v.empty()) return 0;
    size_t rank = size_t(p / 100.0 * double(v.size()) + 0.999999999);
    rank = std::clamp<size_t>(rank, 1, v.size());
    return double(v[rank - 1]) / 1e3;  // microseconds
}

}  // namespace

int main(int argc, char** argv) {
    const char* read_file = nullptr;
    const char* write_file = nullptr;
    int readers = 4, write_mib = 256;
    uint64_t min_reads = 500;
    size_t max_samples = 4000000;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (i + 1 >= argc) die("every option takes a value");
        const char* v = argv[++i];
        if (a == "--read-file") read_file = v;
        else if (a == "--write-file") write_file = v;
        else if (a == "--readers") readers = std::atoi(v);
        else if (a == "--write-mib") write_mib = std::atoi(v);
        else if (a == "--min-reads") min_reads = std::strtoull(v, nullptr, 10);
        else if (a == "--max-samples") max_samples = std::strtoull(v, nullptr, 10);
        else die("unknown option");
    }
    if (!read_file || !write_file) die("--read-file and --write-file are required");
    if (readers < 1 || readers > kMaxReaders) die("--readers takes 1 to 64");
    if (write_mib < 1) die("--write-mib takes at least 1");
    if (max_samples < min_reads) die("--max-samples is below --min-reads");

    auto* sh = new (map_shared(sizeof(Shared))) Shared{};
    auto* samples = static_cast<Sample*>(map_shared(sizeof(Sample) * max_samples * size_t(readers)));
    int start[2];
    if (pipe(start) != 0) die("pipe", errno);
    std::vector<pid_t> kids;
    for (int r = 0; r <= readers; ++r) {
        pid_t pid = fork();
        if (pid < 0) die("fork", errno);
        if (pid == 0) {
            close(start[1]);
            if (r == readers) writer(sh, write_file, write_mib, start[0]);
            reader(r, sh, samples + size_t(r) * max_samples, max_samples, read_file, min_reads, start[0]);
        }
        kids.push_back(pid);
    }
    close(start[0]);
    // The readers open their file before waiting: give them a moment so the
    // start is not spent on their LOOKUP and OPEN.
    usleep(200000);
    sh->t0 = now_ns();
    close(start[1]);
    bool failed = false;
    for (pid_t k : kids) {
        int st = 0;
        if (waitpid(k, &st, 0) != k || !WIFEXITED(st) || WEXITSTATUS(st) != 0) failed = true;
    }
    if (failed) die("a reader or the writer failed (see above)");

    int64_t end = sh->writer_end;
    uint64_t reads = 0;
    std::vector<int64_t> all, win;
    for (int r = 0; r < readers; ++r) {
        end = std::max(end, sh->reader_end[r]);
        reads += sh->reader_count[r];
        for (uint64_t i = 0; i < sh->reader_count[r]; ++i) {
            const Sample& s = samples[size_t(r) * max_samples + i];
            all.push_back(s.end_ns - s.start_ns);
            // Any read the fsync overlapped, also one that began just before
            // it and waited through it.
            if (s.start_ns < sh->fsync_end && s.end_ns > sh->fsync_start) win.push_back(s.end_ns - s.start_ns);
        }
    }
    std::sort(all.begin(), all.end());
    std::sort(win.begin(), win.end());
    auto sec = [](int64_t ns) { return double(ns) / 1e9; };
    std::printf("PARBENCH total_s=%.3f write_s=%.3f fsync_s=%.3f reads=%" PRIu64
                " win_reads=%zu win_p50_us=%.0f win_p99_us=%.0f win_max_us=%.0f"
                " all_p50_us=%.0f all_p99_us=%.0f all_max_us=%.0f\n",
                sec(end - sh->t0), sec(sh->fsync_start - sh->write_start), sec(sh->fsync_end - sh->fsync_start),
                reads, win.size(), pct(win, 50), pct(win, 99), win.empty() ? 0.0 : double(win.back()) / 1e3,
                pct(all, 50), pct(all, 99), all.empty() ? 0.0 : double(all.back()) / 1e3);
    return 0;
}
