#include "security/frontend.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace ocivm::security {

namespace {

using Clock = std::chrono::steady_clock;

int ms_left(Clock::time_point deadline) {
    auto d = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return d < 0 ? 0 : static_cast<int>(d);
}

[[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error(what + (errno ? std::string(": ") + std::strerror(errno) : ""));
}

template <typename T>
T load_acquire(const void* p) {
    return __atomic_load_n(static_cast<const T*>(p), __ATOMIC_ACQUIRE);
}
template <typename T>
void store_release(void* p, T v) {
    __atomic_store_n(static_cast<T*>(p), v, __ATOMIC_RELEASE);
}

}  // namespace

std::string unique_name(const std::string& prefix) {
    static std::atomic<unsigned> counter{0};
    return prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

TempDir::TempDir(const std::string& prefix) {
    path_ = "/tmp/" + unique_name(prefix);
    if (::mkdir(path_.c_str(), 0700) < 0) fail("mkdir " + path_);
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

TmpfsMount::TmpfsMount(const std::string& dir, unsigned size_mib) : dir_(dir) {
    if (size_mib == 0) return;
    std::string o = "size=" + std::to_string(size_mib) + "m,mode=0755";
    if (::mount("ocivm-sec-share", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, o.c_str()) < 0)
        fail("mounting a " + std::to_string(size_mib) + " MiB tmpfs on " + dir + " (run as root)");
    mounted_ = true;
}

TmpfsMount::~TmpfsMount() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
}

bool read_proc_memory(pid_t pid, ProcMemory& out) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    if (!f) return false;
    std::string line;
    bool any = false;
    while (std::getline(f, line)) {
        auto value = [&](const char* key, uint64_t& v) {
            size_t n = std::strlen(key);
            if (line.compare(0, n, key) != 0) return;
            v = std::strtoull(line.c_str() + n, nullptr, 10);
            any = true;
        };
        uint64_t threads = 0;
        value("VmRSS:", out.rss);
        value("RssAnon:", out.anon);
        value("RssShmem:", out.shmem);
        value("VmHWM:", out.hwm);
        value("Threads:", threads);
        if (threads) out.threads = static_cast<unsigned>(threads);
    }
    return any;
}

int count_fds(pid_t pid) {
    DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
    if (!d) return -1;
    int n = 0;
    while (auto* e = ::readdir(d))
        if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    return n;
}

// ---------------------------------------------------------------------------

FsdProcess::FsdProcess(const Options& o) : log_path_(o.log_path) {
    if (::access(o.ocivm.c_str(), X_OK) < 0)
        throw std::runtime_error("ocivm binary " + o.ocivm + " is not executable (pass --ocivm PATH)");
    // Autobind: an abstract address the kernel picks, so nothing is left in
    // the file system and no two tests collide.
    UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener) fail("socket");
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof(sa_family_t)) < 0) fail("bind");
    if (::listen(listener.get(), 1) < 0) fail("listen");
    socklen_t alen = sizeof a;
    if (::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&a), &alen) < 0) fail("getsockname");
    sock_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock_) fail("socket");
    // Queued in the backlog: fsd accepts it once it runs.
    if (::connect(sock_.get(), reinterpret_cast<sockaddr*>(&a), alen) < 0) fail("connect");

    UniqueFd log(::open(o.log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!log) fail("creating " + o.log_path);
    std::vector<std::string> args = {o.ocivm, "fsd", "--fd", "3", "--shared-dir", o.shared_dir,
                                     "--log-level", o.log_level};
    args.insert(args.end(), o.extra.begin(), o.extra.end());
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_t parent = ::getpid();

    pid_ = ::fork();
    if (pid_ < 0) fail("fork");
    if (pid_ == 0) {
        // Only async-signal-safe calls from here on.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(127);
        // Out of the way first: either may already be fd 1, 2 or 3.
        int l = ::fcntl(listener.get(), F_DUPFD_CLOEXEC, 10), g = ::fcntl(log.get(), F_DUPFD_CLOEXEC, 10);
        if (l < 0 || g < 0 || ::dup2(l, 3) < 0 || ::dup2(g, 2) < 0 || ::dup2(g, 1) < 0) ::_exit(127);
        // Nothing else of ours (or of whoever started us) reaches fsd.
        ::close_range(4, ~0u, 0);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
}

FsdProcess::~FsdProcess() { kill_and_reap(); }

bool FsdProcess::running() {
    if (reaped_) return false;
    int st;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
        reaped_ = true;
        status_ = st;
        return false;
    }
    return true;
}

bool FsdProcess::wait_exit(int ms) {
    auto deadline = Clock::now() + std::chrono::milliseconds(ms);
    for (;;) {
        if (!running()) return true;
        if (Clock::now() >= deadline) return false;
        ::usleep(2000);
    }
}

bool FsdProcess::crashed() const {
    if (!reaped_ || !WIFSIGNALED(status_)) return false;
    return !(killed_ && WTERMSIG(status_) == SIGKILL);
}

std::string FsdProcess::describe_exit() const {
    if (!reaped_) return "still running";
    if (WIFEXITED(status_)) return "exited with status " + std::to_string(WEXITSTATUS(status_));
    if (WIFSIGNALED(status_))
        return std::string("killed by signal ") + ::strsignal(WTERMSIG(status_)) +
               (killed_ && WTERMSIG(status_) == SIGKILL ? " (by the test)" : "");
    return "ended with wait status " + std::to_string(status_);
}

void FsdProcess::kill_and_reap() {
    if (pid_ <= 0 || reaped_) return;
    if (running()) {
        killed_ = true;
        ::kill(pid_, SIGKILL);
        int st;
        while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
        }
        status_ = st;
        reaped_ = true;
    }
}

std::string FsdProcess::log() const {
    std::ifstream f(log_path_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

pid_t FsdProcess::server_pid() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(pid_) + "/children");
    pid_t child = 0;
    if (in >> child && child > 0) return child;
    return pid_;
}

ProcMemory FsdProcess::memory() const {
    ProcMemory m;
    read_proc_memory(server_pid(), m);
    return m;
}

// ---------------------------------------------------------------------------

bool Channel::send_bytes(const void* bytes, size_t len, std::span<const int> fds) {
    if (!sock_) return false;
    iovec iov{const_cast<void*>(bytes), len};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    std::vector<char> ctl(CMSG_SPACE(sizeof(int) * (fds.empty() ? 1 : fds.size())));
    if (!fds.empty()) {
        m.msg_control = ctl.data();
        m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr* c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = ::sendmsg(sock_.get(), &m, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        done += static_cast<size_t>(n);
        // The fds went with the first bytes.
        m.msg_control = nullptr;
        m.msg_controllen = 0;
        iov.iov_base = static_cast<char*>(iov.iov_base) + n;
        iov.iov_len -= static_cast<size_t>(n);
    }
    return true;
}

bool Channel::send(uint32_t request, const void* payload, uint32_t size, std::span<const int> fds,
                   uint32_t flags) {
    // The payload actually sent is what the caller has; `size` in the
    // header is whatever it says (lying sizes are an attack). Callers
    // that lie pass a payload buffer at least as long as they want sent.
    uint32_t hdr[3] = {request, flags, size};
    std::vector<std::byte> buf(sizeof hdr + (payload ? size : 0));
    std::memcpy(buf.data(), hdr, sizeof hdr);
    if (payload && size) std::memcpy(buf.data() + sizeof hdr, payload, size);
    return send_bytes(buf.data(), buf.size(), fds);
}

std::optional<Channel::Msg> Channel::recv(int ms) {
    if (!sock_) return std::nullopt;
    auto deadline = Clock::now() + std::chrono::milliseconds(ms);
    auto read_exact = [&](void* p, size_t len) {
        auto* c = static_cast<char*>(p);
        while (len) {
            pollfd pfd{sock_.get(), POLLIN, 0};
            int r = ::poll(&pfd, 1, ms_left(deadline));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) return false;
            ssize_t n = ::recv(sock_.get(), c, len, MSG_DONTWAIT);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n <= 0) return false;
            c += n;
            len -= static_cast<size_t>(n);
        }
        return true;
    };
    uint32_t hdr[3];
    if (!read_exact(hdr, sizeof hdr)) return std::nullopt;
    Msg m;
    m.request = hdr[0];
    m.flags = hdr[1];
    if (hdr[2] > 4096) return std::nullopt;  // not a reply we could trust
    m.payload.resize(hdr[2]);
    if (hdr[2] && !read_exact(m.payload.data(), hdr[2])) return std::nullopt;
    return m;
}

std::optional<Channel::Msg> Channel::recv_for(uint32_t request, int ms) {
    auto deadline = Clock::now() + std::chrono::milliseconds(ms);
    for (;;) {
        auto r = recv(ms_left(deadline));
        if (!r || r->request == request) return r;
    }
}

std::optional<uint64_t> Channel::request_ack(uint32_t request, const void* payload, uint32_t size,
                                             std::span<const int> fds, int ms) {
    if (!send(request, payload, size, fds, kFlagVersion | kFlagNeedReply)) return std::nullopt;
    auto r = recv_for(request, ms);
    if (!r || r->payload.size() != sizeof(uint64_t)) return std::nullopt;
    uint64_t v;
    std::memcpy(&v, r->payload.data(), sizeof v);
    return v;
}

std::optional<uint64_t> Channel::get_u64(uint32_t request, int ms) {
    if (!send(request, nullptr, 0)) return std::nullopt;
    auto r = recv_for(request, ms);
    if (!r || r->payload.size() != sizeof(uint64_t)) return std::nullopt;
    uint64_t v;
    std::memcpy(&v, r->payload.data(), sizeof v);
    return v;
}

bool Channel::alive(int ms) { return get_u64(kGetFeatures, ms).has_value(); }

// ---------------------------------------------------------------------------

GuestRam::GuestRam(uint64_t size, uint64_t gpa, uint64_t uaddr, const char* name)
    : size_(size), gpa_(gpa), uaddr_(uaddr), next_(gpa) {
    fd_ = UniqueFd(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd_) fail("memfd_create");
    if (::ftruncate(fd_.get(), static_cast<off_t>(size)) < 0) fail("ftruncate guest RAM");
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd_.get(), 0);
    if (p == MAP_FAILED) fail("mmap guest RAM");
    base_ = static_cast<std::byte*>(p);
}

GuestRam::~GuestRam() {
    if (base_) ::munmap(base_, size_);
}

uint64_t GuestRam::alloc(uint64_t len, uint64_t align) {
    uint64_t p = (next_ + align - 1) & ~(align - 1);
    if (p + len > gpa_ + size_) throw std::runtime_error("guest RAM exhausted");
    next_ = p + len;
    return p;
}

// ---------------------------------------------------------------------------

GuestQueue::GuestQueue(GuestRam& ram, unsigned index, uint16_t num)
    : ram_(ram), index_(index), num_(num) {
    desc_gpa_ = ram.alloc(16ull * num, 4096);
    avail_gpa_ = ram.alloc(6 + 2ull * num, 64);
    used_gpa_ = ram.alloc(6 + 8ull * num, 4096);
    std::memset(ram.at(desc_gpa_), 0, 16ull * num);
    std::memset(ram.at(avail_gpa_), 0, 6 + 2ull * num);
    std::memset(ram.at(used_gpa_), 0, 6 + 8ull * num);
    kick_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    call_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!kick_ || !call_) fail("eventfd");
}

VringAddr GuestQueue::addr() const {
    return {index_, 0, ram_.uaddr_of(desc_gpa_), ram_.uaddr_of(used_gpa_), ram_.uaddr_of(avail_gpa_), 0};
}

Desc* GuestQueue::desc() const { return reinterpret_cast<Desc*>(ram_.at(desc_gpa_)); }

void GuestQueue::set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    desc()[i] = {addr, len, flags, next};
}

void GuestQueue::publish(uint16_t head) {
    std::byte* avail = ram_.at(avail_gpa_);
    uint16_t idx = load_acquire<uint16_t>(avail + 2);
    std::memcpy(avail + 4 + 2 * (idx % num_), &head, 2);
    store_release<uint16_t>(avail + 2, static_cast<uint16_t>(idx + 1));
}

uint16_t GuestQueue::avail_idx() const { return load_acquire<uint16_t>(ram_.at(avail_gpa_) + 2); }
void GuestQueue::set_avail_idx(uint16_t v) { store_release<uint16_t>(ram_.at(avail_gpa_) + 2, v); }

void GuestQueue::kick() {
    uint64_t one = 1;
    (void)!::write(kick_.get(), &one, sizeof one);
}

uint16_t GuestQueue::used_idx() const { return load_acquire<uint16_t>(ram_.at(used_gpa_) + 2); }

void GuestQueue::reset_indices(uint16_t base) {
    // As a driver that (re)starts a ring: both indices at the base.
    last_used_ = base;
    store_release<uint16_t>(ram_.at(used_gpa_) + 2, base);
    store_release<uint16_t>(ram_.at(avail_gpa_) + 2, base);
}

bool GuestQueue::take_used(uint32_t* id, uint32_t* len, int ms) {
    auto deadline = Clock::now() + std::chrono::milliseconds(ms);
    std::byte* used = ram_.at(used_gpa_);
    std::byte* avail = ram_.at(avail_gpa_);
    for (;;) {
        if (used_idx() != last_used_) {
            std::byte* e = used + 4 + 8 * (last_used_ % num_);
            std::memcpy(id, e, 4);
            std::memcpy(len, e + 4, 4);
            ++last_used_;
            // used_event: interrupt me when the used index passes what I took.
            store_release<uint16_t>(avail + 4 + 2 * num_, last_used_);
            return true;
        }
        store_release<uint16_t>(avail + 4 + 2 * num_, last_used_);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (used_idx() != last_used_) continue;
        int left = ms_left(deadline);
        if (left == 0) return false;
        pollfd p{call_.get(), POLLIN, 0};
        // A short poll too: an interrupt fsd decided not to send must not
        // make us wait out the whole deadline when the entry is there.
        if (::poll(&p, 1, std::min(left, 50)) == 1) {
            uint64_t v;
            (void)!::read(call_.get(), &v, sizeof v);
        }
    }
}

// ---------------------------------------------------------------------------

void Device::negotiate(uint64_t features) {
    auto offered = ch_.get_u64(kGetFeatures);
    if (!offered) throw std::runtime_error("fsd did not answer GET_FEATURES");
    uint64_t want = features & *offered;
    if (!ch_.send(kSetOwner, nullptr, 0)) throw std::runtime_error("SET_OWNER: socket closed");
    if (!ch_.send(kSetFeatures, &want, sizeof want)) throw std::runtime_error("SET_FEATURES: socket closed");
    if (want & kFeatProtocol) {
        auto proto = ch_.get_u64(kGetProtocolFeatures);
        if (!proto || !(*proto & kProtoReplyAck))
            throw std::runtime_error("fsd does not offer REPLY_ACK");
        uint64_t p = kProtoReplyAck | (*proto & kProtoMq);
        if (!ch_.send(kSetProtocolFeatures, &p, sizeof p))
            throw std::runtime_error("SET_PROTOCOL_FEATURES: socket closed");
    } else {
        throw std::runtime_error("this front end needs VHOST_USER_F_PROTOCOL_FEATURES (REPLY_ACK)");
    }
    // A round trip: everything above was taken.
    if (!ch_.alive()) throw std::runtime_error("fsd stopped answering during negotiation");
}

std::optional<uint64_t> Device::set_mem_table(std::span<const MemRegion> regions, std::span<const int> fds) {
    std::vector<std::byte> p(8 + regions.size() * sizeof(MemRegion));
    uint32_t n = static_cast<uint32_t>(regions.size());
    std::memcpy(p.data(), &n, 4);
    if (!regions.empty()) std::memcpy(p.data() + 8, regions.data(), regions.size() * sizeof(MemRegion));
    return ch_.request_ack(kSetMemTable, p.data(), static_cast<uint32_t>(p.size()), fds);
}

std::optional<uint64_t> Device::set_mem_table(const GuestRam& ram) {
    MemRegion r = ram.region();
    int fd = ram.fd();
    return set_mem_table({&r, 1}, {&fd, 1});
}

std::optional<uint64_t> Device::vring_state(uint32_t request, uint32_t index, uint32_t num) {
    uint32_t s[2] = {index, num};
    return ch_.request_ack(request, s, sizeof s);
}

std::optional<uint64_t> Device::vring_fd(uint32_t request, uint32_t index, int fd) {
    uint64_t v = index | (fd < 0 ? kVringNoFd : 0);
    if (fd < 0) return ch_.request_ack(request, &v, sizeof v);
    return ch_.request_ack(request, &v, sizeof v, {&fd, 1});
}

void Device::start_queue(GuestQueue& q, uint16_t base) {
    auto check = [&](const char* what, std::optional<uint64_t> r) {
        if (!r) throw std::runtime_error(std::string(what) + ": no answer from fsd");
        if (*r != 0) throw std::runtime_error(std::string(what) + ": refused by fsd");
    };
    q.reset_indices(base);
    check("SET_VRING_NUM", vring_state(kSetVringNum, q.index(), q.num()));
    check("SET_VRING_BASE", vring_state(kSetVringBase, q.index(), base));
    VringAddr a = q.addr();
    check("SET_VRING_ADDR", ch_.request_ack(kSetVringAddr, &a, sizeof a));
    check("SET_VRING_CALL", vring_fd(kSetVringCall, q.index(), q.call_fd()));
    check("SET_VRING_KICK", vring_fd(kSetVringKick, q.index(), q.kick_fd()));
    check("SET_VRING_ENABLE", vring_state(kSetVringEnable, q.index(), 1));
}

// ---------------------------------------------------------------------------

FuseClient::FuseClient(GuestRam& ram, GuestQueue& q, uint16_t slots, uint32_t in_size, uint32_t out_size)
    : ram_(ram), q_(q), slots_(std::min<uint16_t>(slots, q.num() / 2)), in_size_(in_size),
      out_size_(out_size) {
    in_base_ = ram.alloc(uint64_t(slots_) * in_size_, 4096);
    out_base_ = ram.alloc(uint64_t(slots_) * out_size_, 4096);
    busy_.assign(slots_, false);
    done_.assign(slots_, false);
    done_len_.assign(slots_, 0);
}

int FuseClient::submit_raw(std::span<const std::byte> request, uint32_t out_len) {
    if (request.size() > in_size_) throw std::runtime_error("request larger than a slot");
    if (out_len == 0 || out_len > out_size_) out_len = out_size_;
    for (uint16_t s = 0; s < slots_; ++s) {
        if (busy_[s]) continue;
        busy_[s] = true;
        done_[s] = false;
        std::memcpy(ram_.at(in_gpa(s)), request.data(), request.size());
        std::memset(ram_.at(out_gpa(s)), 0, sizeof(fuse_out_header));
        uint16_t d = static_cast<uint16_t>(2 * s);
        q_.set_desc(d, in_gpa(s), static_cast<uint32_t>(request.size()), kDescNext, d + 1);
        q_.set_desc(d + 1, out_gpa(s), out_len, kDescWrite, 0);
        q_.publish(d);
        return s;
    }
    return -1;
}

int FuseClient::submit(uint32_t opcode, uint64_t nodeid, std::span<const std::byte> args, uint32_t out_len) {
    std::vector<std::byte> req(sizeof(fuse_in_header) + args.size());
    fuse_in_header h{};
    h.len = static_cast<uint32_t>(req.size());
    h.opcode = opcode;
    h.unique = next_unique();
    h.nodeid = nodeid;
    std::memcpy(req.data(), &h, sizeof h);
    if (!args.empty()) std::memcpy(req.data() + sizeof h, args.data(), args.size());
    return submit_raw(req, out_len);
}

bool FuseClient::poll_one(int ms) {
    uint32_t id, len;
    if (!q_.take_used(&id, &len, ms)) return false;
    if (id % 2 == 0 && id / 2 < slots_ && busy_[id / 2]) {
        done_[id / 2] = true;
        done_len_[id / 2] = len;
    } else {
        others_.emplace_back(id, len);
    }
    return true;
}

void FuseClient::fill_reply(int slot, uint32_t len, Reply& r) {
    r.answered = true;
    r.used_len = len;
    fuse_out_header oh{};
    std::memcpy(&oh, ram_.at(out_gpa(slot)), sizeof oh);
    r.error = oh.error;
    r.unique = oh.unique;
    uint32_t body = len > sizeof oh ? len - static_cast<uint32_t>(sizeof oh) : 0;
    body = std::min(body, out_size_ - static_cast<uint32_t>(sizeof oh));
    r.body.assign(ram_.at(out_gpa(slot)) + sizeof oh, ram_.at(out_gpa(slot)) + sizeof oh + body);
}

bool FuseClient::wait(int slot, Reply& r, int ms) {
    auto deadline = Clock::now() + std::chrono::milliseconds(ms);
    while (!done_[slot])
        if (!poll_one(ms_left(deadline))) return false;
    fill_reply(slot, done_len_[slot], r);
    busy_[slot] = false;
    done_[slot] = false;
    return true;
}

bool FuseClient::wait_all(int ms) {
    auto deadline = Clock::now() + std::chrono::milliseconds(ms);
    for (uint16_t s = 0; s < slots_; ++s) {
        if (!busy_[s]) continue;
        while (!done_[s])
            if (!poll_one(ms_left(deadline))) return false;
        busy_[s] = false;
        done_[s] = false;
    }
    return true;
}

void FuseClient::reset() {
    busy_.assign(slots_, false);
    done_.assign(slots_, false);
    others_.clear();
}

bool FuseClient::wait_foreign(uint32_t head, uint32_t* len, int ms) {
    auto deadline = Clock::now() + std::chrono::milliseconds(ms);
    for (;;) {
        for (auto it = others_.begin(); it != others_.end(); ++it) {
            if (it->first == head) {
                if (len) *len = it->second;
                others_.erase(it);
                return true;
            }
        }
        if (!poll_one(ms_left(deadline))) return false;
    }
}

FuseClient::Reply FuseClient::call(uint32_t opcode, uint64_t nodeid, std::span<const std::byte> args,
                                   uint32_t out_len, int ms) {
    Reply r;
    int s = submit(opcode, nodeid, args, out_len);
    if (s < 0) throw std::runtime_error("no free FUSE slot");
    q_.kick();
    wait(s, r, ms);
    return r;
}

bool FuseClient::init() {
    struct {
        fuse_init_in in;
    } a{};
    a.in.major = FUSE_KERNEL_VERSION;
    a.in.minor = FUSE_KERNEL_MINOR_VERSION;
    a.in.max_readahead = 128 * 1024;
    a.in.flags = FUSE_ASYNC_READ | FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO | FUSE_MAX_PAGES;
    auto r = call(FUSE_INIT, 0, std::as_bytes(std::span(&a, 1)));
    return r.answered && r.error == 0;
}

uint64_t FuseClient::lookup(uint64_t parent, const std::string& name, int32_t* error) {
    std::vector<std::byte> n(name.size() + 1);
    std::memcpy(n.data(), name.c_str(), name.size() + 1);
    auto r = call(FUSE_LOOKUP, parent, n);
    if (error) *error = r.answered ? r.error : -ETIMEDOUT;
    if (!r.answered || r.error || r.body.size() < sizeof(fuse_entry_out)) return 0;
    fuse_entry_out e;
    std::memcpy(&e, r.body.data(), sizeof e);
    return e.nodeid;
}

// ---------------------------------------------------------------------------

Session::Session(const Options& o)
    : dir("ocivm-sec"),
      share([&] {
          std::string p = dir.path() + "/share";
          if (::mkdir(p.c_str(), 0755) < 0) fail("mkdir " + p);
          return p;
      }()),
      share_mount(share, o.share_tmpfs_mib),
      fsd(FsdProcess::Options{o.ocivm, share, dir.path() + "/fsd.log", o.log_level, o.fsd_args}),
      ch(fsd.take_socket()),
      dev(ch),
      ram(o.ram_size, kGpa, kUaddr),
      q(ram, 1, o.queue_size) {
    try {
        dev.negotiate();
        if (!o.start) return;
        auto st = dev.set_mem_table(ram);
        if (!st || *st) throw std::runtime_error("SET_MEM_TABLE of plain guest RAM refused");
        dev.start_queue(q);
        fuse.emplace(ram, q);
        if (!fuse->init()) throw std::runtime_error("FUSE_INIT failed");
    } catch (const std::exception& e) {
        throw std::runtime_error(std::string("session set-up: ") + e.what() + "\n" + report());
    }
}

Session::~Session() {
    ch.close();
    // A clean fsd exits when its front end goes; one that does not is killed.
    if (!fsd.wait_exit(5000)) fsd.kill_and_reap();
}

std::string Session::report() {
    fsd.running();
    std::string log = fsd.log();
    if (log.size() > 4000) log = "..." + log.substr(log.size() - 4000);
    return "fsd (pid " + std::to_string(fsd.pid()) + ") " + fsd.describe_exit() + "; its log:\n" + log;
}

bool Session::fuse_works(int ms) {
    if (!fuse) return false;
    std::byte dot[2] = {std::byte{'.'}, std::byte{0}};
    auto r = fuse->call(FUSE_LOOKUP, FUSE_ROOT_ID, dot, 0, ms);
    return r.answered && r.error == 0;
}

std::string ocivm_path_from_args(int& argc, char** argv) {
    std::string path;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--ocivm") == 0 && i + 1 < argc) {
            path = argv[i + 1];
            for (int j = i; j + 2 <= argc; ++j) argv[j] = argv[j + 2];
            argc -= 2;
            break;
        }
    }
    if (path.empty())
        if (const char* e = std::getenv("OCIVM_BIN")) path = e;
    return path;
}

}  // namespace ocivm::security
