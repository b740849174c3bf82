// JDBC against Weir: prepared statements with parameters, typed results,
// and SQLSTATEs, as a Java application sees them.
import java.math.BigDecimal;
import java.sql.*;

public class JdbcSmoke {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0], "weir", "")) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE j (id bigint PRIMARY KEY, name text, price numeric(8,2), day date)");
                s.execute("CREATE MATERIALIZED VIEW j_total AS SELECT count(*) AS n, sum(price) AS total FROM j");
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO j VALUES (?, ?, ?, ?)")) {
                for (int i = 1; i <= 3; i++) {
                    p.setLong(1, i);
                    p.setString(2, "item" + i);
                    p.setBigDecimal(3, new BigDecimal(i + ".25"));
                    p.setDate(4, Date.valueOf("2026-11-2" + i));
                    check(p.executeUpdate() == 1, "one row per insert");
                }
            }
            try (PreparedStatement p = c.prepareStatement("SELECT name, price, day FROM j WHERE id = ?")) {
                p.setLong(1, 2);
                try (ResultSet r = p.executeQuery()) {
                    check(r.next(), "a row");
                    check(r.getString(1).equals("item2"), "name");
                    check(r.getBigDecimal(2).compareTo(new BigDecimal("2.25")) == 0, "price");
                    check(r.getDate(3).toString().equals("2026-11-22"), "day " + r.getDate(3));
                    check(!r.next(), "one row");
                }
            }
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT n, total FROM j_total")) {
                check(r.next(), "a total");
                check(r.getLong(1) == 3, "count");
                check(r.getBigDecimal(2).compareTo(new BigDecimal("6.75")) == 0, "total " + r.getBigDecimal(2));
            }
            try (Statement s = c.createStatement()) {
                s.execute("INSERT INTO j VALUES (1, 'dup', 0, NULL)");
                check(false, "duplicate accepted");
            } catch (SQLException e) {
                check("23505".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.execute("INSERT INTO j VALUES (4, 'four', 1.00, NULL)");
            }
            c.commit();
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT n FROM j_total")) {
                check(r.next() && r.getLong(1) == 4, "committed insert visible");
            }
        }
        System.out.println("ok");
    }
}
