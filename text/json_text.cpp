#include "text/json_text.hpp"

namespace batchgate::routes {

bool json_too_deep(std::string_view text, std::size_t max_depth) {
    std::size_t depth = 0;
    bool in_string = false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (in_string) {
            if (c == '\\')
                ++i;  // the escaped character can be neither a quote nor a bracket
            else if (c == '"')
                in_string = false;
            continue;
        }
        switch (c) {
            case '"': in_string = true; break;
            case '[':
            case '{':
                if (++depth > max_depth) return true;
                break;
            case ']':
            case '}':
                if (depth) --depth;
                break;
            default: break;
        }
    }
    return false;
}

parsed_json parse_json(std::string_view text, std::size_t max_depth) {
    parsed_json out;
    if (json_too_deep(text, max_depth)) {
        out.value = nlohmann::json(nlohmann::json::value_t::discarded);
        out.status = json_status::too_deep;
        return out;
    }
    out.value = nlohmann::json::parse(text, nullptr, false);
    out.status = out.value.is_discarded() ? json_status::invalid : json_status::ok;
    return out;
}

std::string json_depth_message(std::size_t max_depth) {
    return "JSON nested deeper than limits.max_json_depth (" + std::to_string(max_depth) + ")";
}

}  // namespace batchgate::routes
