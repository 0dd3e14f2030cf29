// The README walk-through with the JDK's own java.net.http.HttpClient, default settings
// (HTTP/2 preferred: on http:// it offers an h2c upgrade, which the server must ignore).
// No build tool, no dependencies (Java 11+ runs a single source file):
//   java Walkthrough.java http://127.0.0.1:8000 [API_KEY]

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public class Walkthrough {
    static final HttpClient CLIENT = HttpClient.newHttpClient();
    static String base;
    static String apiKey;

    public static void main(String[] args) throws Exception {
        base = args.length > 0 ? args[0] : "http://127.0.0.1:8000";
        apiKey = args.length > 1 ? args[1] : null;

        // Create a session with 3 features (PyTorch defaults: eps 1e-5, momentum 0.1).
        Map<?, ?> session = (Map<?, ?>) call("POST", "/v1/sessions", "{\"num_features\": 3}", 201);
        String id = (String) session.get("id");

        // Fit: train-mode output and batch statistics (JSON in, JSON out).
        Map<?, ?> fit = (Map<?, ?>) call("POST", "/v1/sessions/" + id + "/fit",
                "{\"data\": [[1, 2, 3], [4, 6, 5], [7, 9, 10]]}", 200);
        check(number(fit.get("num_batches_tracked")) == 1, "one batch tracked");
        Map<?, ?> batch = (Map<?, ?>) fit.get("batch");
        close(number(((List<?>) batch.get("mean")).get(0)), 4, "batch mean");

        // Transform: inference mode with the running statistics.
        Map<?, ?> y = (Map<?, ?>) call("POST", "/v1/sessions/" + id + "/transform",
                "{\"data\": [[1, 2, 3]]}", 200);
        check(((List<?>) y.get("shape")).size() == 2, "output is (1, 3)");

        // Read the statistics: PyTorch names, eps, momentum, population moments.
        Map<?, ?> stats = (Map<?, ?>) call("GET", "/v1/sessions/" + id + "/stats", null, 200);
        double runningMean = number(((List<?>) stats.get("running_mean")).get(0));
        close(runningMean, 0.4, "running_mean = 0.9 * 0 + 0.1 * 4");

        // Errors are RFC 9457 problem+json.
        Map<?, ?> problem = (Map<?, ?>) call("GET", "/v1/sessions/no-such-session", null, 404);
        check("urn:bnaas:problem:session-not-found".equals(problem.get("type")), "problem type");

        call("DELETE", "/v1/sessions/" + id, null, 204);
        System.out.println("{\"ok\": true, \"session\": \"" + id + "\", \"running_mean0\": "
                + runningMean + "}");
    }

    /** One request; fails unless the status is {@code expected}; the parsed JSON answer. */
    static Object call(String method, String path, String json, int expected) throws Exception {
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(base + path))
                .header("Accept", "application/json, application/problem+json");
        if (apiKey != null) {
            request.header("Authorization", "Bearer " + apiKey);
        }
        if (json != null) {
            request.header("Content-Type", "application/json");
            request.method(method, HttpRequest.BodyPublishers.ofString(json));
        } else {
            request.method(method, HttpRequest.BodyPublishers.noBody());
        }
        HttpResponse<String> response = CLIENT.send(request.build(), HttpResponse.BodyHandlers.ofString());
        if (response.statusCode() != expected) {
            throw new IllegalStateException(method + " " + path + ": expected " + expected + ", got "
                    + response.statusCode() + " " + response.body());
        }
        return response.body().isEmpty() ? null : new Json(response.body()).value();
    }

    static double number(Object value) {
        return ((Number) value).doubleValue();
    }

    static void check(boolean cond, String what) {
        if (!cond) {
            throw new IllegalStateException("walk-through: " + what);
        }
    }

    static void close(double a, double b, String what) {
        check(Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b)), what + ": " + a + " != " + b);
    }

    /** A small JSON reader (the JDK has none): objects, arrays, strings, numbers, literals. */
    static final class Json {
        private final String s;
        private int i;

        Json(String s) {
            this.s = s;
        }

        Object value() {
            skip();
            char c = s.charAt(i);
            if (c == '{') {
                Map<String, Object> map = new LinkedHashMap<>();
                i++;
                skip();
                if (s.charAt(i) == '}') {
                    i++;
                    return map;
                }
                do {
                    skip();
                    String key = string();
                    skip();
                    expect(':');
                    map.put(key, value());
                    skip();
                } while (s.charAt(i++) == ',');
                return map;
            }
            if (c == '[') {
                List<Object> list = new ArrayList<>();
                i++;
                skip();
                if (s.charAt(i) == ']') {
                    i++;
                    return list;
                }
                do {
                    list.add(value());
                    skip();
                } while (s.charAt(i++) == ',');
                return list;
            }
            if (c == '"') {
                return string();
            }
            for (String literal : new String[] {"true", "false", "null"}) {
                if (s.startsWith(literal, i)) {
                    i += literal.length();
                    return literal.equals("null") ? null : Boolean.valueOf(literal);
                }
            }
            int start = i;
            while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) {
                i++;
            }
            return Double.valueOf(s.substring(start, i));
        }

        private String string() {
            expect('"');
            StringBuilder out = new StringBuilder();
            while (s.charAt(i) != '"') {
                char c = s.charAt(i++);
                if (c == '\\') {
                    char e = s.charAt(i++);
                    switch (e) {
                        case 'n' -> out.append('\n');
                        case 't' -> out.append('\t');
                        case 'r' -> out.append('\r');
                        case 'b' -> out.append('\b');
                        case 'f' -> out.append('\f');
                        case 'u' -> {
                            out.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                            i += 4;
                        }
                        default -> out.append(e);
                    }
                } else {
                    out.append(c);
                }
            }
            i++;
            return out.toString();
        }

        private void expect(char c) {
            if (s.charAt(i++) != c) {
                throw new IllegalArgumentException("JSON: expected " + c + " at " + (i - 1));
            }
        }

        private void skip() {
            while (i < s.length() && Character.isWhitespace(s.charAt(i))) {
                i++;
            }
        }
    }
}
