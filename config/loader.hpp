// Loads and validates gateway YAML. Exceptions are used here only (control plane): every
// problem found is collected, so one run of --check-config shows them all.
#pragma once

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"

namespace batchgate::config {

// what() is every error on its own line: "FILE:LINE:COL: KEY.PATH: message".
class config_error : public std::runtime_error {
public:
    explicit config_error(std::vector<std::string> errors);
    const std::vector<std::string>& errors() const { return errors_; }

private:
    std::vector<std::string> errors_;
};

// Throws config_error (also for an unreadable file or invalid YAML syntax).
gateway_config load_file(const std::string& path);
// file_name is used in messages only.
gateway_config load_string(std::string_view yaml, const std::string& file_name);

// "5ms", "2s", "1m", "250us", "1h" -> milliseconds (sub-millisecond values round up to 1ms
// unless zero). nullopt when malformed.
std::optional<duration> parse_duration(std::string_view text);
// "64KiB", "10MB", "1MiB", "512", "2GB" -> bytes (KB = 1000, KiB = 1024). nullopt when malformed.
std::optional<std::size_t> parse_size(std::string_view text);

}  // namespace batchgate::config
