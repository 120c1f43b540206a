// Checks of a request the gateway builds from client data itself (a $batch entry, a fan_out
// item call): it never passed the listener's parser, so it gets the same rules here (RFC 9112
// as Beast applies them: token method and field names, field values without control
// characters, a target without spaces or control characters), stricter where a value carried
// in JSON has no business: no bytes over 0x7f, and only the methods a REST call uses (no
// TRACE, CONNECT or unknown methods). Pure and Beast-free.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace batchgate::fanout {

// Why this method may not be sent, or nullopt: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS.
std::optional<std::string> check_method(std::string_view method);

// Why this request-target may not be sent, or nullopt: visible ASCII only.
std::optional<std::string> check_target(std::string_view target);

// Why this header field may not be sent, or nullopt: a token name, a value of visible ASCII,
// spaces and tabs.
std::optional<std::string> check_field(std::string_view name, std::string_view value);

// The target and every field; the first reason found. For a fan_out item call, whose method
// is the operator's (config), not the client's.
std::optional<std::string> check_message(std::string_view target,
                                         const std::vector<std::pair<std::string, std::string>>& headers);

// The method too: a $batch entry, whose method the client chose.
std::optional<std::string> check_request(std::string_view method, std::string_view target,
                                         const std::vector<std::pair<std::string, std::string>>& headers);

}  // namespace batchgate::fanout
