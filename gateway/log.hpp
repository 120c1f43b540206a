// Structured JSON log lines on stderr (one object per line). Access logs come later.
#pragma once

#include <chrono>
#include <cstdio>
#include <string_view>

#include <nlohmann/json.hpp>

namespace batchgate::gateway {

inline void log_line(std::string_view level, std::string_view message, nlohmann::json fields = nlohmann::json::object()) {
    nlohmann::json line = nlohmann::json::object();
    const auto now = std::chrono::system_clock::now();
    line["ts"] = std::chrono::duration<double>(now.time_since_epoch()).count();
    line["level"] = level;
    line["msg"] = message;
    if (fields.is_object())
        for (auto& [k, v] : fields.items()) line[k] = v;
    const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    std::fwrite(text.data(), 1, text.size(), stderr);
}

}  // namespace batchgate::gateway
