// batchgate: command line entry point.
#include <malloc.h>

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
