// Structured logs: one JSON object per line. Operational messages go to stderr; the access
// log (one line per client request) goes to stdout. Level and access log are set from the
// config's `logging` section at start-up and on reload.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string_view>

#include <nlohmann/json.hpp>

namespace batchgate::gateway {

enum class log_level { debug = 0, info = 1, warn = 2, error = 3 };

struct log_settings {
    std::atomic<int> level{static_cast<int>(log_level::info)};
    std::atomic<bool> access_log{true};
};

inline log_settings& logging() {
    static log_settings settings;
    return settings;
}

inline int level_number(std::string_view level) {
    if (level == "debug") return 0;
    if (level == "warn") return 2;
    if (level == "error") return 3;
    return 1;
}

inline void write_json_line(nlohmann::json& line, std::FILE* to) {
    const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    // One locked fwrite per line, so lines never interleave; flushed at once, since stdout to a
    // pipe (every container runtime) is block-buffered and lines would wait there, or be lost.
    std::fwrite(text.data(), 1, text.size(), to);
    std::fflush(to);
}

inline double unix_time() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

inline void log_line(std::string_view level, std::string_view message, nlohmann::json fields = nlohmann::json::object()) {
    if (level_number(level) < logging().level.load(std::memory_order_relaxed)) return;
    nlohmann::json line = nlohmann::json::object();
    line["ts"] = unix_time();
    line["level"] = level;
    line["msg"] = message;
    if (fields.is_object())
        for (auto& [k, v] : fields.items()) line[k] = v;
    write_json_line(line, stderr);
}

}  // namespace batchgate::gateway
