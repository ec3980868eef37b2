// ocivm run: boot IMAGE as an ephemeral VM, run the command, return its
// exit status.
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/import.h"
#include "disk/gpt.h"
#include "fs/passthrough.h"
#include "fuse/serve_config.h"
#include "cli/pull.h"
#include "image/resolve.h"
#include "net/network.h"
#include "util/error.h"
#include "util/log.h"
#include "vm/machine.h"
#include "vm/snapshot.h"
#include "vm/supervisor.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm run [OPTIONS] IMAGE [COMMAND [ARG...]]
       ocivm run --from-snapshot SNAPSHOT [-d] [--name NAME] [-p ...]

Boots IMAGE as an ephemeral VM and runs COMMAND in it (default: the image's
entrypoint and cmd). The image's root file system is served to the guest by
ocivm's own virtio-fs server, read-only, under a tmpfs overlay: the guest may
write anywhere, and the image on the host never changes. The command's stdout
and stderr arrive separately on ocivm's stdout and stderr; ocivm exits with
the command's status.

IMAGE is a root file system directory (e.g. the demo image that 'make'
builds: build/demo), an OCI image layout directory (imported into the store
on first use), the name of an image in the store ('ocivm image ls'), or a
registry reference (alpine, docker.io/library/alpine:3.19, ...@sha256:...),
pulled into the store first when it is not there (--pull).

Options:
  -d, --detach                keep the VM running in the background: print its
                              name once the guest is ready for 'ocivm exec',
                              and return (see 'ocivm ps', 'exec', 'logs',
                              'stop', 'wait', 'rm'); the command's output goes
                              to 'ocivm logs NAME'
      --pull POLICY           missing | always | never (default: missing):
                              missing pulls IMAGE from its registry when the
                              store has no image of that name, always pulls
                              it again first, never uses only what is stored
                              (as podman)
      --platform OS/ARCH      the platform pulled from an index
                              (default: linux/amd64)
      --tls-verify=false      no certificate check for the pull (default: true)
      --creds USER:PASS       registry credentials for the pull
      --authfile FILE         registry credentials from this auth.json
      --rm                    remove the VM's state directory (console log) at
                              exit
  -i, --interactive           forward ocivm's stdin to the command
  -t, --tty                   give the command a terminal (a pty in the guest,
                              with the window size of ocivm's terminal)
  -e, --env KEY=VALUE         set an environment variable (KEY alone: take its
                              value from ocivm's environment); repeatable
      --env-file FILE         read KEY=VALUE lines from FILE
  -v, --volume HOST:GUEST[:OPTIONS]
                              share the host directory HOST at GUEST; OPTIONS a
                              comma list: ro or rw (default), nodev or dev,
                              nosuid or suid, noexec or exec, writeback.
                              Writable shares are nodev,nosuid by default: the
                              guest can create no device nodes and no
                              set-user/group-ID files on the host. writeback:
                              the guest caches writes and sends them later in
                              large batches (much faster writes), taking file
                              sizes and mtimes from its own cache; changes made
                              to HOST while the VM runs may be missed or
                              overwritten, so only for a directory nothing else
                              writes to meanwhile (docs/filesystem.md,
                              "Writeback cache"). Each share is served by a
                              confined process of its own (docs/security.md),
                              over virtio-fs, or with --root erofs over a
                              virtio-serial port (slower, but the VM can be
                              snapshotted with it: docs/vm.md); repeatable
  -w, --workdir DIR           working directory of the command (created if
                              missing)
  -u, --user UID[:GID]        run as this user (numbers, or names from the
                              image's /etc/passwd and /etc/group)
      --hostname NAME         the guest's host name (default: the VM's name)
  -m, --memory SIZE           guest memory, e.g. 512M, 2G (default: 512M)
      --cpus N                virtual CPUs (default: 1)
      --cache MODE            never | metadata | auto | always: caching of the
                              virtio-fs shares (default: always for the
                              read-only root, auto for -v shares)
      --timeout DURATION      how long the command may take to start, e.g. 90s,
                              5m (default: 120s; 300s under TCG and 240s when
                              nested, unless given); on expiry the VM is stopped
                              and ocivm prints where the boot got stuck
      --systemd               boot the image's systemd and run the command from
                              a unit once the system is up
      --kernel PATH|image     the guest kernel: a bzImage (modules from
                              /lib/modules/RELEASE), or 'image' for the image's
                              own /usr/lib/modules/*/vmlinuz (default: the
                              host's newest /boot/vmlinuz-*)
      --karg ARG              extra kernel command-line argument; repeatable
      --machine TYPE          microvm (default) or q35
      --root virtiofs|erofs   how the image's root reaches the guest:
                              virtiofs (default) is ocivm's virtio-fs server;
                              erofs is a read-only EROFS image of it (built
                              once per image with mkfs.erofs, cached) on a
                              virtio-blk disk, which a VM snapshot can hold
                              (root only). With erofs, the first run of an
                              image with given options (memory, CPUs,
                              machine, network mode, kernel) saves the booted
                              VM, and later runs restore it instead of
                              booting (the command, its identity and its
                              forwards are each run's own); not with -v,
                              --systemd or a bridge network
      --no-snapshot-cache     boot, neither restoring nor saving a boot
                              snapshot ('ocivm snapshot prune' empties the
                              cache)
      --from-snapshot SNAPSHOT
                              start a clone of SNAPSHOT ('ocivm snapshot
                              create') instead of booting: the VM resumes where
                              the snapshot was taken, with its processes and
                              what it wrote, under a new name, host name, MAC,
                              machine-id, clock and random seed, and its own
                              network with its own -p forwards. No IMAGE, no
                              command (the snapshot's runs on); what the boot
                              fixed comes from the snapshot and cannot be
                              given: --memory, --cpus, -v, --kernel, --karg,
                              --root, --disk, --systemd, -e, --env-file, -w,
                              -u, -i, -t, --cache, --trace, --console
      --disk FILE             boot a disk made by 'ocivm disk create' (raw or
                              qcow2, read-only, root by its PARTUUID) instead of
                              IMAGE: 'ocivm run --disk FILE -- CMD' 
      --console               show the guest's console (kernel and init) on
                              stderr
      --trace FILE            record every virtio-fs request of the root share
                              as a JSON line (-v shares: FILE.vol0, FILE.vol1,
                              ...)
      --name NAME             the VM's name (state in /run/ocivm/vms/NAME);
                              with -d a random one is printed when not given
      --network MODE          none | user | passt | slirp | bridge (default:
                              user with -d or -p, else none): user is
                              rootless, through passt (QEMU's own user
                              network, slirp, when passt is missing); the
                              guest is 10.0.2.15/24, its gateway 10.0.2.2
                              reaches the host's loopback. bridge (root): a
                              network namespace, tap and veth per VM, NAT
                              from --subnet (docs/networking.md)
  -p, --publish [IP:]HOSTPORT:GUESTPORT[/tcp|/udp]
                              forward HOSTPORT on the host (127.0.0.1 unless
                              IP is given; 0.0.0.0: every address) to
                              GUESTPORT in the guest; repeatable; a port in
                              use is an error before boot
      --subnet CIDR           bridge: the network VMs get a /30 from
                              (default: 10.89.0.0/16)
      --log-level LEVEL       trace | debug | info | warn | error (default:
                              warn)
  -h, --help                  show this help

Exit status: the command's; 128+N when it was killed by signal N; 126 when
it cannot be executed, 127 when it is not found; 125 when ocivm itself fails
(bad flags, missing image or kernel, a VM that did not start in time).
Ctrl-C is forwarded to the command once it runs; a second one stops the VM.
)";

// QEMU's -m: whole MiB, 64M to 1024G; a bare number is MiB, as QEMU reads it.
std::string parse_memory(const std::string& v) {
    bool bare = !v.empty() && v.find_first_not_of("0123456789") == std::string::npos;
    unsigned long long mib = parse_size("--memory", bare ? v + "M" : v) >> 20;
    if (mib < 64 || mib > 1024 * 1024)
        throw UsageError{"invalid --memory '" + v + "': give a size from 64M to 1024G, e.g. 512M or 2G"};
    return std::to_string(mib) + "M";
}

// HOST:GUEST[:OPTIONS], OPTIONS a comma list of ro|rw, nodev|dev,
// nosuid|suid, noexec|exec (podman's spelling) and writeback (virtiofsd's
// word). Writable shares are nodev,nosuid unless told otherwise: a guest
// must not plant device nodes or set-id files on the host.
vm::ShareSpec parse_volume(const std::string& v) {
    vm::ShareSpec s;
    std::string rest = v;
    size_t c = rest.find(':');
    if (c == std::string::npos || c == 0 || c + 1 >= rest.size() || rest[c + 1] != '/')
        throw UsageError{"invalid --volume '" + v + "': use HOST:GUEST[:OPTIONS] with an absolute GUEST path, "
                         "OPTIONS a comma list of ro|rw, nodev|dev, nosuid|suid, noexec|exec, writeback"};
    s.host = rest.substr(0, c);
    rest = rest.substr(c + 1);
    size_t o = rest.find(':');
    s.guest = rest.substr(0, o);
    if (o != std::string::npos) {
        std::string opts = rest.substr(o + 1) + ",";
        for (size_t a = 0, b; (b = opts.find(',', a)) != std::string::npos; a = b + 1) {
            std::string f = opts.substr(a, b - a);
            if (f == "ro") s.readonly = true;
            else if (f == "rw") s.readonly = false;
            else if (f == "nodev") s.nodev = true;
            else if (f == "dev") s.nodev = false;
            else if (f == "nosuid") s.nosuid = true;
            else if (f == "suid") s.nosuid = false;
            else if (f == "noexec") s.noexec = true;
            else if (f == "exec") s.noexec = false;
            else if (f == "writeback") s.writeback = true;
            else
                throw UsageError{"invalid --volume '" + v + "': unknown option '" + f +
                                 "'; use ro, rw, nodev, dev, nosuid, suid, noexec, exec or writeback"};
        }
    }
    struct stat st;
    if (::stat(s.host.c_str(), &st) < 0 || !S_ISDIR(st.st_mode))
        throw Error("volume " + s.host + " is not an existing directory; create it first");
    char real[PATH_MAX];
    if (!::realpath(s.host.c_str(), real)) throw_errno("resolving " + s.host, errno);
    s.host = real;
    return s;
}

// run --from-snapshot: the command, identity and machine are the
// snapshot's; the name, host name, network forwards and -d are the clone's.
int run_clone(vm::MachineOptions m, const std::vector<std::string>& pos, const std::vector<std::string>& boot_flags,
              bool detach, bool network_given, bool machine_given, const std::string& hostname) {
    if (!pos.empty())
        throw UsageError{"--from-snapshot takes no IMAGE or command (the snapshot's command runs on): got '" + pos[0] + "'"};
    if (!boot_flags.empty())
        throw UsageError{boot_flags[0] + " cannot be given with --from-snapshot: a clone has its snapshot's"};
    vm::SnapshotInfo s = vm::load_snapshot(m.from_snapshot);
    if (machine_given && m.machine != s.machine)
        throw Error(vm::restore_refusal(s, m.machine, false));
    m.machine = s.machine;
    if (s.network == "none") {
        if (!m.net.ports.empty() || (network_given && m.net.mode != net::Mode::None))
            throw UsageError{"snapshot '" + s.name + "' has no network device; its clones cannot have -p or --network"};
        m.net.mode = net::Mode::None;
    } else {
        if (network_given && m.net.mode != net::Mode::User && m.net.mode != net::Mode::Passt && m.net.mode != net::Mode::Slirp)
            throw UsageError{"snapshot '" + s.name + "' has a user network: its clones take --network user, passt or slirp"};
        if (!network_given) m.net.mode = net::Mode::User;
    }
    if (m.net.subnet != net::NetworkOptions{}.subnet) throw UsageError{"--subnet is for --network bridge only"};
    // QEMU and the machine are checked here, before anything starts (the
    // supervisor checks again, with the accelerator).
    if (std::string why = vm::restore_refusal(s, m.machine, s.accel == "kvm"); !why.empty()) throw Error(why);
    m.root_erofs = true;
    // The snapshot's -v shares, served again from the same host directories
    // (a clone cannot change them: --volume is refused above).
    for (auto& sh : s.shares) {
        // The very directory the snapshot recorded, reached without a
        // symbolic link (the share server checks again as it opens it).
        vm::open_share_root(sh, s.name);
        vm::ShareSpec v;
        v.host = sh.host;
        v.guest = sh.guest;
        v.readonly = sh.readonly;
        v.nodev = sh.nodev;
        v.nosuid = sh.nosuid;
        v.noexec = sh.noexec;
        v.writeback = sh.writeback;
        v.trusted_xattrs = sh.trusted_xattrs;
        v.root_dev = sh.root_dev;
        v.root_ino = sh.root_ino;
        m.shares.push_back(v);
        // The source's cache mode (one for all its shares; --cache is refused
        // for a clone).
        if (!sh.cache.empty()) m.cache = sh.cache;
    }
    m.image = s.image;
    m.rootfs = s.rootfs;
    m.memory = s.memory;
    m.cpus = s.cpus;
    auto& g = m.guest;
    g.argv = s.command;
    g.env = s.env;
    g.cwd = s.cwd;
    g.uid = s.uid;
    g.gid = s.gid;
    g.systemd = s.systemd;
    if (m.name.empty()) m.name = vm::random_name();
    g.hostname = hostname.empty() ? m.name : hostname;
    if (g.hostname.size() > 64) throw UsageError{"the host name '" + g.hostname + "' is longer than 64 characters"};
    for (char ch : g.hostname)
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '.' && ch != '_')
            throw UsageError{"invalid host name '" + g.hostname + "' for a clone: letters, digits, '-', '.', '_'"};
    if (detach) return vm::run_detached(std::move(m));
    return vm::run_machine(std::move(m));
}

}  // namespace

int cmd_run(int argc, char** argv) {
    vm::MachineOptions m;
    bool help = false, interactive = false, tty = false, detach = false, network_given = false;
    bool machine_given = false;
    std::vector<std::string> boot_flags;  // what a clone takes from its snapshot instead
    std::string log_level = "warn", workdir, user, hostname, cpus = "1";
    std::vector<std::string> envs, env_files, volumes;
    PullFlags pull;
    auto net_spec = [](const auto& f) {  // network
        try {
            f();
        } catch (const net::SpecError& e) {
            throw UsageError{e.what()};
        }
    };
    std::vector<Option> opts = {
        {"rm", 0, false, [&](const std::string&) { m.rm = true; }},
        {"detach", 'd', false, [&](const std::string&) { detach = true; }},
        {"interactive", 'i', false, [&](const std::string&) { interactive = true; }},
        {"tty", 't', false, [&](const std::string&) { tty = true; }},
        {"env", 'e', true, [&](const std::string& v) { envs.push_back(v); }},
        {"env-file", 0, true, [&](const std::string& v) { env_files.push_back(v); }},
        {"volume", 'v', true, [&](const std::string& v) { volumes.push_back(v); }},
        {"workdir", 'w', true, [&](const std::string& v) { workdir = v; }},
        {"user", 'u', true, [&](const std::string& v) { user = v; }},
        {"hostname", 0, true, [&](const std::string& v) { hostname = v; }},
        {"memory", 'm', true, [&](const std::string& v) { m.memory = parse_memory(v); }},
        {"cpus", 0, true, [&](const std::string& v) { m.cpus = parse_count("--cpus", v, 64); }},
        {"cache", 0, true, [&](const std::string& v) { m.cache = v; }},
        {"timeout", 0, true, [&](const std::string& v) { m.timeout_s = parse_duration("--timeout", v); m.timeout_given = true; }},
        {"systemd", 0, false, [&](const std::string&) { m.guest.systemd = true; }},
        {"kernel", 0, true, [&](const std::string& v) { m.kernel = v; }},
        {"karg", 0, true, [&](const std::string& v) { m.kargs.push_back(v); }},
        {"machine", 0, true, [&](const std::string& v) { m.machine = v; machine_given = true; }},
        {"from-snapshot", 0, true, [&](const std::string& v) { m.from_snapshot = v; }},
        {"no-snapshot-cache", 0, false, [&](const std::string&) { m.no_snapshot_cache = true; }},
        {"disk", 0, true, [&](const std::string& v) { m.disk = v; }},
        {"root", 0, true, [&](const std::string& v) {
             if (v != "virtiofs" && v != "erofs") throw UsageError{"invalid --root '" + v + "': use virtiofs or erofs"};
             m.root_erofs = v == "erofs";
         }},
        {"console", 0, false, [&](const std::string&) { m.console = true; }},
        {"trace", 0, true, [&](const std::string& v) { m.trace = v; }},
        {"name", 0, true, [&](const std::string& v) { m.name = v; }},
        // network (src/net): a bad value is a usage error naming the form
        {"network", 0, true, [&](const std::string& v) {
             net_spec([&] { m.net.mode = net::parse_mode(v); });
             network_given = true;
         }},
        {"publish", 'p', true, [&](const std::string& v) { net_spec([&] { m.net.ports.push_back(net::parse_port(v)); }); }},
        {"subnet", 0, true, [&](const std::string& v) { net_spec([&] { net::parse_subnet(v); m.net.subnet = v; }); }},
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
    };
    for (auto& o : pull.options(true)) opts.push_back(std::move(o));
    // What a clone cannot be given (its snapshot fixed it), by flag.
    for (auto& o : opts) {
        static const char* fixed[] = {"memory", "cpus", "kernel", "karg", "disk", "root", "volume", "systemd",
                                      "interactive", "tty", "env", "env-file", "workdir", "user", "cache", "trace", "console"};
        for (const char* f : fixed)
            if (o.long_name == f) {
                auto apply = o.apply;
                o.apply = [apply, f, &boot_flags](const std::string& v) {
                    boot_flags.push_back(std::string("--") + f);
                    apply(v);
                };
            }
    }
    auto pos = parse_args("run", argc, argv, 2, opts, &help, true);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    m.debug = log_level == "debug" || log_level == "trace";
    if (!m.from_snapshot.empty()) return run_clone(std::move(m), pos, boot_flags, detach, network_given, machine_given, hostname);
    if (!m.disk.empty()) {
        // A disk made by 'ocivm disk create' is the root: no IMAGE, the
        // positionals are the command.
        char real[PATH_MAX];
        if (!::realpath(m.disk.c_str(), real)) throw_errno("disk " + m.disk, errno, "give an existing disk image");
        m.disk = real;
        m.disk_partuuid = disk::root_partuuid(m.disk);
        if (m.kernel == "image") throw UsageError{"--kernel image cannot be used with --disk; give --kernel PATH or none"};
        pos.insert(pos.begin(), "");
    }
    if (pos.empty()) throw UsageError{"'ocivm run' needs an IMAGE; see 'ocivm run --help'"};
    if (m.root_erofs && !m.disk.empty()) throw UsageError{"--root erofs and --disk both give the root: choose one"};
    if (detach && (interactive || tty))
        throw UsageError{"-d cannot be combined with -i or -t (there is no attach); use 'ocivm exec -it NAME CMD'"};
    if (m.machine != "microvm" && m.machine != "q35")
        throw UsageError{"invalid --machine '" + m.machine + "': use microvm or q35"};
    fs::CacheMode vol_mode = fs::CacheMode::Auto;  // what machine.cpp serves -v shares with
    if (!m.cache.empty() && !fs::parse_cache_mode(m.cache, vol_mode))
        throw UsageError{"invalid --cache '" + m.cache + "': use never, metadata, auto or always"};
    if (!m.name.empty() && (m.name.find('/') != std::string::npos || m.name[0] == '.'))
        throw UsageError{"invalid --name '" + m.name + "': no '/' and no leading '.'"};
    for (auto& v : volumes) {
        m.shares.push_back(parse_volume(v));
        if (!m.shares.back().writeback) continue;
        if (auto why = fuse::writeback_refusal(vol_mode, m.shares.back().readonly); !why.empty())
            throw UsageError{"invalid --volume '" + v + "': writeback: " + why};
    }
    // A sandbox lives on and talks to the world; a batch run stays offline
    // unless it forwards ports.
    if (!network_given && (detach || !m.net.ports.empty())) m.net.mode = net::Mode::User;
    if (m.net.mode != net::Mode::Bridge && m.net.subnet != net::NetworkOptions{}.subnet)  // network
        throw UsageError{"--subnet is for --network bridge only (user networks are always 10.0.2.0/24)"};
    if (m.net.mode == net::Mode::Bridge && ::geteuid() != 0)  // network: refused before any work
        throw Error("--network bridge needs root (a network namespace, a veth pair and nftables rules per VM); "
                    "as a user, use --network user");
    pull.finish(log_level);

    image::ResolvedImage img;
    if (m.disk.empty()) {
        // An OCI layout is imported by a confined child; this process keeps
        // what it needs for the VM.
        img = image::resolve_image(pull_for_run(pos[0], pull.policy, pull.req), [&](const std::string& source) {
            return import_confined(source, "", log_level).digest;
        });
    } else {
        img.rootfs = "/nonexistent/ocivm-disk-root";  // user names cannot be looked up on the host
        img.kind = "disk " + m.disk;
        img.config.env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"};
    }
    m.rootfs = img.rootfs;
    m.image = m.disk.empty() ? pos[0] : m.disk;
    auto& g = m.guest;
    std::vector<std::string> cmd(pos.begin() + 1, pos.end());
    g.argv = img.config.entrypoint;
    if (!cmd.empty()) g.argv.insert(g.argv.end(), cmd.begin(), cmd.end());
    else g.argv.insert(g.argv.end(), img.config.cmd.begin(), img.config.cmd.end());
    if (g.argv.empty())
        throw UsageError{"no command: " + pos[0] + " (" + img.kind + ") has no default command; give one after IMAGE"};

    image::User u = image::resolve_user(img.rootfs, user.empty() ? img.config.user : user);
    g.uid = u.uid;
    g.gid = u.gid;
    g.groups = u.groups;
    g.env = img.config.env;
    set_env(g.env, "HOME=" + u.home);
    if (tty) set_env(g.env, "TERM=" + std::string(std::getenv("TERM") ? std::getenv("TERM") : "xterm"));
    for (auto& f : env_files) {
        std::ifstream in(f);
        if (!in) throw Error("cannot read --env-file " + f + ": " + std::strerror(errno));
        std::string line;
        while (std::getline(in, line)) {
            if (line.empty() || line[0] == '#') continue;
            std::string e = env_entry(line);
            if (!e.empty()) set_env(g.env, e);
        }
    }
    for (auto& e : envs) {
        std::string entry = env_entry(e);
        if (!entry.empty()) set_env(g.env, entry);
    }
    g.cwd = !workdir.empty() ? workdir : !img.config.workdir.empty() ? img.config.workdir : "/";
    if (g.cwd[0] != '/') throw UsageError{"invalid --workdir '" + g.cwd + "': give an absolute path"};
    g.tty = tty;
    g.stdin_open = interactive;
    if (tty) {
        winsize ws{};
        if (::ioctl(0, TIOCGWINSZ, &ws) == 0 || ::ioctl(1, TIOCGWINSZ, &ws) == 0) {
            g.rows = ws.ws_row;
            g.cols = ws.ws_col;
        }
    }
    // The guest is called as the VM is, named or not (--hostname aside).
    if (m.name.empty()) m.name = vm::random_name();
    g.hostname = hostname.empty() ? m.name : hostname;
    if (detach) return vm::run_detached(std::move(m));
    return vm::run_machine(std::move(m));
}

}  // namespace ocivm::cli
