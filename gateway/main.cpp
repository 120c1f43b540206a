// batchgate: command line entry point.
#include <malloc.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "config/loader.hpp"
#include "gateway/server.hpp"
#include "net/log.hpp"

namespace {

constexpr const char* usage =
    "usage: batchgate --config FILE        run the gateway\n"
    "       batchgate --check-config FILE  validate FILE, print OK or the errors\n"
    "       batchgate --version\n"
    "       batchgate --help\n"
    "\n"
    "Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads the config file.\n";

int check_config(const std::string& path) {
    try {
        auto cfg = batchgate::config::load_file(path);
        std::cout << "OK: " << path << " (" << cfg.routes.size() << " routes, " << cfg.upstreams.size()
                  << " upstreams)\n";
        return 0;
    } catch (const batchgate::config::config_error& e) {
        for (const auto& line : e.errors()) std::cerr << line << "\n";
        return 1;
    }
}

// glibc keeps up to 7 freed blocks of each size per thread (its tcache) and sends the rest to
// the slower shared bins. A batch answer reaches its callers in one burst: 64 to 100 callers
// each allocate and free the same sizes in one round, far past 7 (_int_malloc and _int_free took
// 6% of a coalesced caller's CPU). The cache's size can only be set through GLIBC_TUNABLES, read
// when the process starts, so the gateway runs itself again once with
// glibc.malloc.tcache_count added (256: a default batch with room to spare; at most ~9 MB of
// freed blocks parked per thread). Not when:
// - the variable already sets it (the operator's value wins), or BATCHGATE_MALLOC_TUNING=0;
// - in secure-execution mode (file capabilities, setuid), where glibc drops the variable and
//   the gateway would run itself again for ever;
// - when /proc/self/exe is not the file that was started (the gateway run through ld.so or
//   under valgrind): running that again would run the wrapper with the gateway's arguments.
constexpr const char* tcache_tunable = "glibc.malloc.tcache_count";
constexpr const char* tcache_count = "256";

#ifdef __GLIBC__
// Whether /proc/self/exe is the file the process was started as (AT_EXECFN, which ld.so's direct
// invocation and valgrind set to the program they run, not to themselves).
bool started_as_itself() {
    const auto* execfn = reinterpret_cast<const char*>(getauxval(AT_EXECFN));
    struct stat started{}, exe{};
    return execfn && stat(execfn, &started) == 0 && stat("/proc/self/exe", &exe) == 0 &&
           started.st_dev == exe.st_dev && started.st_ino == exe.st_ino;
}
#endif

void tune_malloc(char** argv) {
#ifdef __GLIBC__
    // Run again through /proc/self/exe, the kernel named the process "exe": give it back the
    // name it was started under (argv[0] is kept), which ps, pgrep and top show.
    char name[16] = {};
    if (argv[0] && prctl(PR_GET_NAME, name) == 0 && std::strcmp(name, "exe") == 0) {
        const char* base = std::strrchr(argv[0], '/');
        prctl(PR_SET_NAME, base ? base + 1 : argv[0]);
    }
    if (const char* off = std::getenv("BATCHGATE_MALLOC_TUNING"); off && std::strcmp(off, "0") == 0) return;
    if (getauxval(AT_SECURE) != 0) return;
    const char* old = std::getenv("GLIBC_TUNABLES");
    if (old && std::strstr(old, tcache_tunable)) return;
    if (!started_as_itself()) return;
    std::string value = std::string(tcache_tunable) + "=" + tcache_count;
    if (old && *old) value += ":" + std::string(old);
    if (setenv("GLIBC_TUNABLES", value.c_str(), 1) != 0) return;
    execv("/proc/self/exe", argv);
    // Not possible (no /proc): run on with glibc's defaults, and say so.
    const int error = errno;
    unsetenv("GLIBC_TUNABLES");
    if (old) setenv("GLIBC_TUNABLES", old, 1);
    batchgate::gateway::log_line("warn", "cannot run again with a larger malloc cache; running with glibc's default",
                                 {{"error", std::strerror(error)}});
#else
    (void)argv;
#endif
}

}  // namespace

int main(int argc, char** argv) {
    // Bodies of 256 KiB and more get pages of their own, handed back to the system when freed.
    // glibc otherwise raises this threshold after the first large free and keeps what later
    // large bodies used (a chunked answer grown step by step left ~1.9x its size resident),
    // so RSS would drift far from limits.max_buffered.
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    std::string config_path;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::cerr << "batchgate: " << arg << " needs a file\n" << usage;
                std::exit(2);
            }
            return argv[++i];
        };
        if (arg == "--help" || arg == "-h") {
            std::cout << usage;
            return 0;
        } else if (arg == "--version") {
            std::cout << "batchgate " << BATCHGATE_VERSION << "\n";
            return 0;
        } else if (arg == "--check-config") {
            return check_config(value());
        } else if (arg == "--config" || arg == "-c") {
            config_path = value();
        } else {
            std::cerr << "batchgate: unknown argument '" << arg << "'\n" << usage;
            return 2;
        }
    }
    if (config_path.empty()) {
        std::cerr << "batchgate: --config FILE is required\n" << usage;
        return 2;
    }
    tune_malloc(argv);
    try {
        auto cfg = std::make_shared<const batchgate::config::gateway_config>(batchgate::config::load_file(config_path));
        batchgate::gateway::server server(cfg);
        server.handle_signals(config_path);
        server.start();
        server.wait();
        batchgate::gateway::log_line("info", "stopped");
        return 0;
    } catch (const batchgate::config::config_error& e) {
        for (const auto& line : e.errors()) std::cerr << line << "\n";
        return 1;
    } catch (const std::exception& e) {
        batchgate::gateway::log_line("error", "cannot start", {{"error", e.what()}});
        return 1;
    }
}
